"""The quantization core: pure functions (functional), range observers (estimators), graph
rewriting (graph) and the simulated quantized model (qsim)."""

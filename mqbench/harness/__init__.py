"""The harness: cells of (model, weights, dataset, quantizer, runtime, scheme, seed, sizes), run and recorded.

* :mod:`.quantizer`: who chooses the qparams, a pipeline of methods or a toolkit recipe, parsed once;
* :mod:`.cell`: a cell, and the cell resolved (names looked up, config and hash);
* :mod:`.grid`: a suite expanded into cells;
* :mod:`.workspace`: what a process's cells share (splits, weights, trained models) and the evaluation loop;
* :mod:`.flows`: one short flow per kind of cell (float, toolkit, QuantSim);
* :mod:`.measurements`: registered measurements after a flow (layer-wise, integer sim, agreement, latency, ...);
* :mod:`.record`: a record's head, plugin references and the checks before it is stored;
* :mod:`.execute`: :func:`run_cell`, the registered executors, the driver :func:`run`;
* :mod:`.ray_executor`: cells as Ray tasks (``--executor ray``).
"""

from mqbench.harness.cell import Cell, ResolvedCell, cell_config, resolve
from mqbench.harness.execute import EXECUTORS, Executor, InProcessExecutor, RunSummary, run, run_cell, skip_reason
from mqbench.harness.grid import expand
from mqbench.harness.quantizer import (
    PIPELINE_HELP,
    Pipeline,
    Quantizer,
    Step,
    ToolkitRecipe,
    check_pipeline,
    parse_pipeline,
    parse_quantizer,
    pipeline_name,
)
from mqbench.harness.record import failed_record, new_record, satisfied
from mqbench.harness.workspace import Workspace, evaluate
from mqbench.record_schema import config_hash

__all__ = ["EXECUTORS", "PIPELINE_HELP", "Cell", "Executor", "InProcessExecutor", "Pipeline", "Quantizer",
           "ResolvedCell", "RunSummary", "Step", "ToolkitRecipe", "Workspace", "cell_config", "check_pipeline",
           "config_hash", "evaluate", "expand", "failed_record", "new_record", "parse_pipeline", "parse_quantizer",
           "pipeline_name", "resolve", "run", "run_cell", "satisfied", "skip_reason"]

"""The papers section of the published leaderboard: for each seed paper, its claims (quoted with the table or
section of the paper they come from) beside our measurement of the same setting on the data we have, and a
one-line verdict computed from those measurements.

Everything comes from the records (the ``papers`` suite runs the cells; ``mqbench analyze`` adds the layer-wise
analyses); a measurement with no record reads "not run", and a verdict that needs it reads "not measured". The
verdict rules are written out in :data:`PAPERS` next to each paper, so a reader can check them against the numbers
in the table.

Only what the reachable text of each paper says is cited: the full text of Sheng et al. (Table 1) and of Yun & Wong,
and the abstracts of Finkelstein et al. and Bae et al.; a figure taken from elsewhere says so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mqbench.report import layerwise, leaderboard
from mqbench.suites import BAE_QAT

Quantity = Literal["top1", "sqnr_lost_db"]


@dataclass(frozen=True)
class Measure:
    """One number of ours: the top-1 (%) of a cell, or (``sqnr_lost_db``) the accumulated SQNR an analysed cell
    loses from its first quantized layer to its last (the Yun & Wong study)."""

    dataset: str
    model: str  # name:weights
    pipeline: str
    scheme: str
    quantity: Quantity = "top1"
    backend: str = "simulated"

    def describe(self) -> str:
        what = "accumulated SQNR lost, first to last layer (dB)" if self.quantity == "sqnr_lost_db" else "top-1 %"
        return f"{self.dataset}, `{self.model}`, `{self.pipeline}` {self.scheme}: {what}"


@dataclass(frozen=True)
class Row:
    """A line of a paper's table: the paper's setting and figure with its source, and our measurement."""

    setting: str
    paper: str  # the paper's figure as text ("" when the paper gives none for this row)
    source: str  # where in the paper ("Table 1", "abstract"), or where the figure comes from
    ours: Measure


Values = Callable[[Measure], float | None]


@dataclass(frozen=True)
class Paper:
    key: str
    citation: str
    url: str
    claim: str  # the claim tested, in the paper's words where quoted
    rows: tuple[Row, ...]
    verdict: Callable[[Values], tuple[str, str]]  # (reproduced | partly | not reproduced | not measured, why)
    rule: str  # the verdict rule, in words


def _measured(values: Values, rows: Sequence[Row]) -> list[float] | str:
    """Our numbers for ``rows`` in order, or, when any is missing, the sentence naming what has no record."""
    found = [values(row.ours) for row in rows]
    absent = [row.ours.describe() for row, v in zip(rows, found, strict=True) if v is None]
    return "no record of " + "; ".join(absent) if absent else [float(v) for v in found if v is not None]


# ---------------------------------------------------------------- Sheng et al. 2018

_V1 = "mobilenet_v1_cifar:mqbench-tf-x0.5"
_QF = "qf_mobilenet_v1_cifar:mqbench-x0.5"
_SHENG = (
    Row("MobileNetV1, float", "70.50", "Table 1 (ImageNet, TF MobileNetV1 1.0)", Measure("cifar10", _V1, "fp32", "fp32")),
    Row("MobileNetV1, 8-bit pipeline", "1.80", "Table 1", Measure("cifar10", _V1, "minmax", "w8a8-pt")),
    Row("quantization-friendly MobileNetV1, float", "70.77", "figure quoted in issue 7 (table not reachable here)",
        Measure("cifar10", _QF, "fp32", "fp32")),
    Row("quantization-friendly MobileNetV1, 8-bit pipeline", "68.03", "abstract",
        Measure("cifar10", _QF, "minmax", "w8a8-pt")),
)


def _sheng(values: Values) -> tuple[str, str]:
    numbers = _measured(values, _SHENG)
    if isinstance(numbers, str):
        return "not measured", numbers
    f1, q1, fq, qq = numbers
    drop_v1, drop_qf = f1 - q1, fq - qq
    why = (f"per-tensor 8-bit costs MobileNetV1 {drop_v1:.2f} points and the quantization-friendly variant "
           f"{drop_qf:.2f}, whose float top-1 is {fq - f1:+.2f} from MobileNetV1's")
    if drop_qf <= 1.0 and drop_v1 >= drop_qf + 3.0 and fq >= f1 - 1.0:
        if drop_v1 >= 30.0:
            return "reproduced", why
        return "partly", why + ("; the variant removes the loss as claimed, but the plain MobileNetV1 does not "
                                "collapse as the paper's does (a small CIFAR-10 network at width 0.5, trained here)")
    return "not reproduced", why


# ---------------------------------------------------------------- Finkelstein et al. 2019

_FINKELSTEIN = (
    Row("MobileNetV2, naive 8-bit per-tensor", "", "", Measure("imagenet", "mobilenet_v2:tf2ptq", "minmax", "w8a8-pt")),
    Row("MobileNetV2, with bias correction", "matches training-based quantization", "abstract",
        Measure("imagenet", "mobilenet_v2:tf2ptq", "minmax+bias_correction", "w8a8-pt")),
    Row("MobileNetV2, float (the weights above)", "", "", Measure("imagenet", "mobilenet_v2:tf2ptq", "fp32", "fp32")),
    Row("MobileNetV2 after quantization-aware training, 8-bit per-tensor on the grid it was trained for (asymmetric "
        "uint8 weights)", "", "the training-based reference", Measure("imagenet", "mobilenet_v2:qat", "minmax",
                                                                      "w8a8-pt-asym")),
    Row("MobileNetV2 after quantization-aware training, float", "", "",
        Measure("imagenet", "mobilenet_v2:qat", "fp32", "fp32")),
)
# Shown, not judged: the QAT model re-gridded to symmetric int8 weights (the scheme of the rows above), and the
# field's tool in the same setting: ONNX Runtime's own quantize_static, MinMax calibration, per-tensor weights, on the
# same weights and calibration images.
_FINKELSTEIN_TOOLS = (
    Row("MobileNetV2 after quantization-aware training, 8-bit per-tensor re-gridded to symmetric int8 weights", "", "",
        Measure("imagenet", "mobilenet_v2:qat", "minmax", "w8a8-pt")),
    Row("MobileNetV2, ONNX Runtime's quantize_static (MinMax), 8-bit per-tensor", "", "reference: the field's tool",
        Measure("imagenet", "mobilenet_v2:tf2ptq", "ort:minmax", "w8a8-pt", backend="ort-qdq")),
)


def _finkelstein(values: Values) -> tuple[str, str]:
    numbers = _measured(values, _FINKELSTEIN)  # the tool's row is shown, not judged
    if isinstance(numbers, str):
        return "not measured", numbers
    naive, bc, flt, qat, qat_float = numbers
    bc_drop, qat_drop, naive_drop = flt - bc, qat_float - qat, flt - naive
    why = (f"bias correction takes per-tensor 8-bit MobileNetV2 from {naive:.2f} to {bc:.2f} ({bc_drop:.2f} below "
           f"float); the quantization-aware-trained weights lose {qat_drop:.2f}")
    if bc_drop <= qat_drop + 1.0:
        return "reproduced", why
    if naive_drop - bc_drop >= 0.5 * naive_drop:
        return "partly", why + "; it recovers most of the loss, but not to the training-based level"
    return "not reproduced", why


# ---------------------------------------------------------------- Yun & Wong 2021

_PAIRS = (("dwscnn_s:mqbench", "cnn_s:mqbench"), ("dwscnn_m:mqbench", "cnn_m:mqbench"))
_YUN = tuple(
    Row(f"{'depthwise-separable' if i == 0 else 'regular'} CNN, size {pair[0].split(':')[0][-1]}, per-tensor 8-bit",
        "DWSCNN accumulates more error" if i == 0 else "", "abstract" if i == 0 else "",
        Measure("cifar10", model, "minmax", "w8a8-pt", "sqnr_lost_db"))
    for pair in _PAIRS for i, model in enumerate(pair))


def _yun(values: Values) -> tuple[str, str]:
    lost = _measured(values, _YUN)
    if isinstance(lost, str):
        return "not measured", lost
    pairs = [(lost[2 * i], lost[2 * i + 1]) for i in range(len(_PAIRS))]
    why = "; ".join(f"size {p[0].split(':')[0][-1]}: {d:.1f} dB lost against {r:.1f} dB"
                    for p, (d, r) in zip(_PAIRS, pairs, strict=True))
    more = sum(d > r + 1.0 for d, r in pairs)
    if more == len(pairs):
        return "reproduced", "the depthwise-separable network of each size accumulates more error: " + why
    if more:
        return "partly", why
    return "not reproduced", why


# ---------------------------------------------------------------- Bae et al. 2022

_BAE_MODELS = (("MobileNetV1", "mobilenet_v1_cifar:mqbench-x0.5", 4.0), ("MobileNetV2", "mobilenet_v2_cifar:mqbench-x0.5", 3.3))
_BAE = tuple(
    row for label, model, gain in _BAE_MODELS for row in (
        Row(f"{label}, gradient-based (TQT) QAT", "", "", Measure(
            "cifar10", model, BAE_QAT.format("tqt", ""), "w4-pc-pow2")),
        Row(f"{label}, gradient-based QAT with the remedies", f"+{gain} over the row above (ImageNet)", "abstract",
            Measure("cifar10", model, BAE_QAT.format("tqt", ",remedies=true"), "w4-pc-pow2")),
        Row(f"{label}, MSQE-based QAT", "", "", Measure(
            "cifar10", model, BAE_QAT.format("msqe", ""), "w4-pc-pow2")),
        Row(f"{label}, MSQE-based QAT with the remedies", "fixes its instability", "abstract", Measure(
            "cifar10", model, BAE_QAT.format("msqe", ",remedies=true"), "w4-pc-pow2")),
    ))


def _bae(values: Values) -> tuple[str, str]:
    v = _measured(values, _BAE)
    if isinstance(v, str):
        return "not measured", v
    parts, gains_met, msqe_better = [], 0, 0
    for i, (label, _, gain) in enumerate(_BAE_MODELS):
        tqt, tqt_r, msqe, msqe_r = v[4 * i:4 * i + 4]
        parts.append(f"{label}: remedies change TQT by {tqt_r - tqt:+.2f} (paper {gain:+.1f}) and MSQE-based QAT by "
                     f"{msqe_r - msqe:+.2f}")
        gains_met += tqt_r - tqt >= gain / 2
        msqe_better += msqe_r >= msqe - 0.5
    why = "; ".join(parts) + " (one epoch of QAT per cell)"
    if gains_met == len(_BAE_MODELS) and msqe_better == len(_BAE_MODELS):
        return "reproduced", why
    if gains_met or msqe_better:
        return "partly", why
    return "not reproduced", why


# ---------------------------------------------------------------- the toolkits' own published figures

_NNCF_YAML = "NNCF tests/post_training/data/ptq_reference_data.yaml"
_NNCF = (
    Row("float (NNCF: timm mobilenetv2_050, ImageNet val 50k; ours: the tf2ptq weights, val-1300)", "65.94",
        f"{_NNCF_YAML}, timm/mobilenetv2_050_backend_FP32",
        Measure("imagenet", "mobilenet_v2:tf2ptq", "fp32", "fp32", backend="openvino")),
    Row("nncf.quantize defaults, run by OpenVINO", "65.31", f"{_NNCF_YAML}, _backend_OV",
        Measure("imagenet", "mobilenet_v2:tf2ptq", "nncf:performance", "w8a8-pc", backend="openvino")),
    Row("float, ONNX Runtime", "65.94", f"{_NNCF_YAML}, _backend_FP32",
        Measure("imagenet", "mobilenet_v2:tf2ptq", "fp32", "fp32", backend="ort-qdq")),
    Row("nncf.quantize defaults on the ONNX model, run by ONNX Runtime", "65.37", f"{_NNCF_YAML}, _backend_ONNX",
        Measure("imagenet", "mobilenet_v2:tf2ptq", "nncf:performance", "w8a8-pc", backend="ort-qdq")),
)
_NNCF_DROPS = (65.94 - 65.31, 65.94 - 65.37)


def _drops_verdict(values: Values, rows: Sequence[Row], claimed: Sequence[float], what: Sequence[str],
                   tolerance: float = 0.5) -> tuple[str, str]:
    """Rows in (float, quantized) pairs: each measured drop against the claimed one; reproduced when every drop is at
    most the claim plus ``tolerance`` points, partly when some is."""
    v = _measured(values, rows)
    if isinstance(v, str):
        return "not measured", v
    drops = [v[2 * i] - v[2 * i + 1] for i in range(len(claimed))]
    why = "; ".join(f"{w}: {d:.2f} points below our float (claimed {c:.2f})"
                    for w, d, c in zip(what, drops, claimed, strict=True))
    met = sum(d <= c + tolerance for d, c in zip(drops, claimed, strict=True))
    if met == len(claimed):
        return "reproduced", why
    return ("partly" if met else "not reproduced"), why


def _nncf(values: Values) -> tuple[str, str]:
    return _drops_verdict(values, _NNCF, _NNCF_DROPS, ("on OpenVINO", "on ONNX Runtime"))


_BREVITAS_CSV = "Brevitas RESULTS_TORCHVISION.csv (shipped in brevitas_examples), fx backend, W8A8"
_BREVITAS = (
    Row("float (Brevitas: torchvision MobileNetV2; ours: the tf2ptq weights, val-1300)", "71.898", _BREVITAS_CSV,
        Measure("imagenet", "mobilenet_v2:tf2ptq", "fp32", "fp32", backend="ort-qdq")),
    Row("its best fully quantized row: po2 scales, per-channel, sym activations, percentile 99.9, 20 equalization "
        "iterations, bias correction (brevitas:ptq, exported QCDQ, run by ONNX Runtime)", "71.312", _BREVITAS_CSV,
        Measure("imagenet", "mobilenet_v2:tf2ptq", "brevitas:ptq", "w8a8-pc", backend="ort-qdq")),
)


def _brevitas(values: Values) -> tuple[str, str]:
    return _drops_verdict(values, _BREVITAS, (71.898 - 71.312,), ("brevitas:ptq on ONNX Runtime",))


_AIMET = (
    Row("float", "71.72", "AIMET's DFQ figure for MobileNetV2 (as quoted in issue 27)",
        Measure("imagenet", "mobilenet_v2:tf2ptq", "fp32", "fp32", backend="ort-qdq")),
    Row("CLE + bias correction, 8-bit per-tensor (ours: aimet-onnx 2.42's CLE and high-bias fold, tf_enhanced "
        "ranges; it has no bias correction)", "71.08", "the same",
        Measure("imagenet", "mobilenet_v2:tf2ptq", "aimet:cle", "w8a8-pt", backend="ort-qdq")),
)


def _aimet(values: Values) -> tuple[str, str]:
    return _drops_verdict(values, _AIMET, (71.72 - 71.08,), ("aimet:cle on ONNX Runtime",))


TOOLKIT_CLAIMS: tuple[Paper, ...] = (
    Paper("nncf", "NNCF's reference accuracies (post-training quantization test suite)",
          "https://github.com/openvinotoolkit/nncf/blob/develop/tests/post_training/data/ptq_reference_data.yaml",
          "nncf.quantize at its defaults loses 0.63 point on OpenVINO and 0.57 through ONNX (timm mobilenetv2_050, the "
          "only MobileNetV2 of the file; a different checkpoint from ours, so the drops are compared, not the top-1).",
          _NNCF, _nncf, "reproduced when each drop from our float on the same runtime is at most the claimed drop plus "
                        "0.5 point; partly when one is"),
    Paper("brevitas", "Brevitas's ImageNet PTQ benchmark (RESULTS_TORCHVISION.csv)",
          "https://github.com/Xilinx/brevitas/tree/master/src/brevitas_examples/imagenet_classification/ptq",
          "Its best fully quantized W8A8 MobileNetV2 configuration loses 0.59 point (71.898 -> 71.312, torchvision "
          "weights, 1000 calibration images).",
          _BREVITAS, _brevitas, "reproduced when our drop from our float is at most the claimed drop plus 0.5 point"),
    Paper("aimet", "AIMET's data-free quantization (CLE + bias correction) on MobileNetV2",
          "https://github.com/quic/aimet",
          "CLE with bias correction brings 8-bit per-tensor MobileNetV2 to 71.08 from 71.72.",
          _AIMET, _aimet, "reproduced when our drop from our float is at most the claimed drop plus 0.5 point"),
)


PAPERS: tuple[Paper, ...] = (
    Paper("sheng2018", "Sheng et al. 2018, \"A Quantization-Friendly Separable Convolution for MobileNets\"",
          "https://arxiv.org/abs/1803.08607",
          "MobileNetV1 collapses in an 8-bit (per-tensor) pipeline; the quantization-friendly separable convolution "
          "(no BN and ReLU6 between depthwise and pointwise, ReLU instead of ReLU6, L2 on depthwise weights) keeps "
          "the float accuracy and quantizes almost losslessly.",
          _SHENG, _sheng,
          "reproduced when the variant loses at most 1 point, MobileNetV1 at least 3 more and at least 30, and the "
          "variant's float top-1 is within 1 point; partly when all but the collapse holds"),
    Paper("finkelstein2019", "Finkelstein, Almog & Grobman 2019, \"Fighting Quantization Bias With Bias\"",
          "https://arxiv.org/abs/1906.03193",
          "Correcting the quantization-induced shift of the mean activation with the bias \"match[es] the performance "
          "of training-based quantization of MobileNets at a fraction of the cost\" (abstract).",
          _FINKELSTEIN + _FINKELSTEIN_TOOLS, _finkelstein,
          "reproduced when bias correction's loss from float is within 1 point of the quantization-aware-trained "
          "weights' loss; partly when it recovers at least half of the naive loss"),
    Paper("yun2021", "Yun & Wong 2021, \"Do All MobileNets Quantize Poorly?\"", "https://arxiv.org/abs/2104.11849",
          "\"There is greater quantization error accumulation in DWSCNN compared to regular CNNs\" (abstract), "
          "studied on a family of small DWSCNNs and regular CNNs of the same depth on CIFAR-10.",
          _YUN, _yun,
          "reproduced when, at every size, the depthwise-separable network loses at least 1 dB more accumulated SQNR "
          "than the regular CNN of the same size; partly when at some sizes"),
    Paper("bae2022", "Bae, Zielinski & Chatterjee 2022, \"A Closer Look at Hardware-Friendly Weight Quantization\"",
          "https://arxiv.org/abs/2210.03671",
          "The remedies \"fix the optimization instability issues present in the MSQE-based methods\" and improve the "
          "gradient-based methods \"by 4.0% and 3.3% for MobileNetV1 and MobileNetV2 on ImageNet\" (abstract); "
          "4-bit power-of-two per-channel weights, float activations.",
          _BAE, _bae,
          "reproduced when the remedies raise TQT by at least half the paper's gain and do not lower MSQE-based QAT "
          "by more than 0.5 point, for both models; partly when either holds for some model"),
)


# ---------------------------------------------------------------- measuring from the records


def measurements(records: Sequence[dict[str, Any]],
                 load_detail: Callable[[dict[str, Any]], Any] | None) -> tuple[Values, Callable[[Measure], str | None]]:
    """``values(measure)`` from the newest ok record of each cell (top-1 in %, deployed when the backend deploys),
    and ``record(measure)``: the record file it came from."""
    found: dict[Measure, tuple[float, str]] = {}
    for row in leaderboard.rows_from_records(records):
        if row["status"] != "ok" or row["top1"] is None:
            continue
        m = Measure(str(row["dataset"]), f"{row['model']}:{row['weights']}", str(row["pipeline"]), str(row["scheme"]),
                    "top1", str(row["backend"]))
        found[m] = (100.0 * float(row["top1"]), str(row["record"]))
    if load_detail is not None:
        for r in sorted(layerwise.analysed(records), key=lambda r: str(r.get("created", ""))):  # newest last wins
            c = r["config"]
            detail = load_detail(r)
            acc = [layer["accumulated"]["sqnr_db"] for layer in (detail or {}).get("layers", [])]
            if len(acc) < 2:
                continue
            m = Measure(str(c["dataset"]), f"{c['model']}:{c['weights']}", str(c["pipeline"]), str(c["scheme"]),
                        "sqnr_lost_db", str(c["backend"]))
            found[m] = (float(acc[0] - acc[-1]), Path(r.get("_path", "")).name)

    def value(m: Measure) -> float | None:
        hit = found.get(m)
        return None if hit is None else hit[0]

    def record(m: Measure) -> str | None:
        hit = found.get(m)
        return None if hit is None else hit[1]

    return value, record


__all__ = ["PAPERS", "TOOLKIT_CLAIMS", "Measure", "Paper", "Row", "measurements"]

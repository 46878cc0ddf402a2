"""`cvtool explain RUN IMAGES`: Grad-CAM (Selvaraju et al., 2017) through the `grad-cam` package.

The heat of a class is the ReLU of the feature map of the network's last spatial layer, weighted by
the mean gradient of the class score. The layer is found by running the model once: the last
module whose output is an N x C x H x W map with H x W > 1 (resnet's layer4, simplenet's blocks,
efficientnet's features, timm's final norm). A network that turns its map into tokens (ViT) is
refused unless `--layer` names one. The Task says which output and sign a class follows
(binary: the negative class is the negated logit).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cvtool.data.images import decode, image_files, normalize_batch
from cvtool.errors import CvtoolError
from cvtool.fileio import atomic_open, write_csv
from cvtool.runs.model import LoadedModel, load_model
from cvtool.runs.outputs import check_folder

INSTALL = 'cvtool explain needs the explain extra: pip install "cvtool[explain]"'
DISPLAY = 224  # overlays are drawn at least this large (small models see 16 px images)


@dataclass
class Explanation:
    path: Path
    class_name: str  # the class whose heat is shown
    probability: float  # the model's probability of that class
    cam: np.ndarray  # H x W in [0, 1] over the model frame (data.resize of the image)
    overlay: Path | None = None

    @property
    def centroid(self) -> tuple[float, float]:
        """Heat-weighted centre (x, y) as fractions of the frame's width and height."""
        height, width = self.cam.shape
        total = max(float(self.cam.sum()), 1e-12)
        ys, xs = np.mgrid[0:height, 0:width]
        return float(((xs + 0.5) * self.cam).sum() / total / width), float(((ys + 0.5) * self.cam).sum() / total / height)


def require_grad_cam() -> None:
    try:
        import pytorch_grad_cam  # noqa: F401
    except ImportError:
        raise CvtoolError(INSTALL) from None


def image_paths(items: Sequence[Path]) -> list[Path]:
    """Files as given, folders searched recursively for images (sorted)."""
    found: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            found += image_files(item)
        elif item.is_file():
            found.append(item)
        else:
            raise CvtoolError(f"{item}: no such image or folder")
    if not found:
        raise CvtoolError(f"{', '.join(map(str, items))}: no images found")
    return found


def find_target_layer(model: nn.Module, example: torch.Tensor) -> str:
    """The name of the last module (by when its forward ends) that outputs a spatial map, once."""
    ends: list[tuple[str, tuple[int, ...]]] = []
    calls: Counter[str] = Counter()

    def record(name: str):
        def hook(module: nn.Module, inputs: object, output: object) -> None:
            calls[name] += 1
            ends.append((name, tuple(output.shape) if isinstance(output, torch.Tensor) else ()))
        return hook

    handles = [module.register_forward_hook(record(name)) for name, module in model.named_modules() if name]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    spatial = [i for i, (name, shape) in enumerate(ends) if len(shape) == 4 and shape[2] * shape[3] > 1
               and calls[name] == 1]
    if not spatial or any(len(shape) == 3 for _, shape in ends[spatial[-1]:]):
        raise CvtoolError("explain: this network has no final spatial feature map (a transformer's tokens?); "
                          "name a layer with --layer")
    return ends[spatial[-1]][0]


class _ClassScore:
    """A grad-cam target: sign x one output of a sample."""

    def __init__(self, column: int, sign: float) -> None:
        self.column, self.sign = column, sign

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return self.sign * output[..., self.column]


def model_inputs(loaded: LoadedModel, images: np.ndarray) -> torch.Tensor:
    """uint8 N x S x S x C at the model's input size -> what the network takes (as predict prepares it)."""
    meta = loaded.meta
    x = torch.from_numpy(normalize_batch(images, meta.mean, meta.std))
    if meta.input_size != meta.image_size:
        from cvtool.data.loaders import resize

        x = resize(x, meta.image_size)
    return x.to(next(loaded.model.parameters()).device)


def grad_cam(loaded: LoadedModel, paths: Sequence[Path], class_index: int | None = None,
             layer: str | None = None) -> list[Explanation]:
    """One Grad-CAM per image, for `class_index` or each image's top class."""
    require_grad_cam()
    from pytorch_grad_cam import GradCAM

    meta, task = loaded.meta, loaded.task
    images = np.stack([decode(p, meta.channels, meta.input_size, meta.resize)[0] for p in paths])
    x = model_inputs(loaded, images)
    with torch.no_grad():
        outputs = task.activate(loaded.model(x).float().cpu().numpy())
    name = layer or find_target_layer(loaded.model, x[:1])
    modules = dict(loaded.model.named_modules())
    if name not in modules:
        raise CvtoolError(f"--layer {name}: no such module (e.g. {', '.join(list(modules)[1:6])})")
    threshold = float(np.asarray(meta.labels(loaded.recipe.evaluate.threshold).thresholds).reshape(-1)[0])
    chosen = [task.explain_target(row, class_index, threshold) for row in outputs]
    with torch.enable_grad(), GradCAM(model=loaded.model, target_layers=[modules[name]]) as cam:
        maps = cam(input_tensor=x, targets=[_ClassScore(column, sign) for column, sign, _ in chosen])
    found = []
    for path, row, (column, sign, explained), heat in zip(paths, outputs, chosen, maps, strict=True):
        probability = float(row[column]) if sign > 0 else 1.0 - float(row[column])
        found.append(Explanation(Path(path), meta.class_names[explained], probability, np.asarray(heat, np.float64)))
    return found


def overlay(explanation: Explanation, channels: int, resize: str) -> np.ndarray:
    """The image (its model frame) with the heat drawn over it, RGB uint8, at least DISPLAY px."""
    from PIL import Image
    from pytorch_grad_cam.utils.image import show_cam_on_image

    side = max(DISPLAY, explanation.cam.shape[0])
    image = decode(explanation.path, channels, side, resize)[0]
    rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image
    heat = np.asarray(Image.fromarray(explanation.cam.astype(np.float32)).resize((side, side), Image.BILINEAR))
    return show_cam_on_image(rgb.astype(np.float32) / 255.0, np.clip(heat, 0, 1), use_rgb=True, image_weight=0.55)


def save_png(array: np.ndarray, path: Path) -> Path:
    from PIL import Image

    with atomic_open(path, "wb") as handle:
        Image.fromarray(array).save(handle, format="PNG")
    return path


def explain_images(target: str | Path, images: Sequence[Path], out: Path, class_name: str | None = None,
                   which: str = "best", layer: str | None = None) -> list[Explanation]:
    """Grad-CAM overlays of `images` into `out` (one PNG each) and explain.csv (class, probability,
    heat centroid as fractions of the frame)."""
    require_grad_cam()
    loaded = load_model(target, which, "cpu")
    reason = loaded.task.check_explainable()
    if reason is not None:
        raise CvtoolError(f"explain: {reason}")
    names = list(loaded.meta.class_names)
    if class_name is not None and class_name not in names:
        raise CvtoolError(f"--class {class_name}: not a class of this model ({', '.join(names[:10])})")
    index = None if class_name is None else names.index(class_name)
    paths = image_paths(images)
    given = {f"IMAGES {item}": item for item in images}
    check_folder("--out", out, {"the checkpoint": loaded.path}, {"the data root": loaded.recipe.data.root, **given},
                 purpose="explain")
    found: list[Explanation] = []
    for start in range(0, len(paths), 32):  # bounded memory: activations and gradients of 32 images
        found += grad_cam(loaded, paths[start:start + 32], index, layer)
    for number, item in enumerate(found):
        item.overlay = save_png(overlay(item, loaded.meta.channels, loaded.meta.resize),
                                out / f"{number:04d}_{item.path.stem}_{item.class_name}.png")
    write_csv(out / "explain.csv", ["image", "class", "probability", "heat_x", "heat_y", "overlay"],
              [[str(e.path), e.class_name, f"{e.probability:.6f}", f"{e.centroid[0]:.4f}", f"{e.centroid[1]:.4f}",
                e.overlay.name if e.overlay else ""] for e in found])
    return found


def explain_errors(run_dir: Path, target: Path, count: int = 8) -> Path | None:
    """A grid of Grad-CAM overlays of the run's most confident errors on its test split (else its val
    split), from the best checkpoint's stored predictions; None when there is nothing to show."""
    from cvtool import plots
    from cvtool.data.folds import fold_view
    from cvtool.data.formats import read_dataset
    from cvtool.runs.layout import RunDir
    from cvtool.runs.plotting import load_predictions

    run = RunDir(Path(run_dir))
    split = next((s for s in ("test", "val") if run.prediction(f"{s}_best").is_file()), None)
    if split is None or not run.checkpoint("best").is_file():
        return None
    loaded = load_model(run.path, "best", "cpu")
    if loaded.task.check_explainable() is not None:
        return None
    stored = load_predictions(run.prediction(f"{split}_best"))
    threshold = loaded.meta.labels(loaded.recipe.evaluate.threshold).thresholds
    wrong = loaded.task.confident_errors(stored["targets"], stored["outputs"], threshold)[:count]
    if len(wrong) == 0:
        return None
    cfg = loaded.recipe.data
    paths = fold_view(read_dataset(cfg, loaded.recipe.task, loaded.recipe.seed), cfg, loaded.recipe.task,
                      loaded.recipe.seed).splits[split].paths
    chosen = [paths[int(stored["indices"][i])] for i in wrong]
    truth = loaded.task.target_labels(stored["targets"][wrong], list(loaded.meta.class_names)) or []
    panels = [(overlay(item, loaded.meta.channels, loaded.meta.resize),
               f"{item.path.name}: true {true}\nheat of {item.class_name} ({item.probability:.2f})")
              for item, true in zip(grad_cam(loaded, chosen), truth, strict=True)]
    return plots.image_grid(panels, f"Grad-CAM of the {len(panels)} most confident errors ({split})", target)

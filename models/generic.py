"""L-CAM on any classifier: a torchvision or timm (``timm:NAME``) classifier by name or a
user's ``nn.Module``, CNN or transformer, split at its last convolutional stage or block
(found automatically) or at a named module.

How the network is split. :class:`GenericLCAM` keeps the whole classifier as its child
``network`` (state-dict keys ``network.*``, so a plain classifier state_dict loads with a
``network.`` prefix) and traces its ``forward`` with ``torch.fx`` into a graph. Only the
network's root ``forward`` and the modules that contain the split layer are traced; every
other module is called as it is (a leaf), so code inside blocks (stochastic depth,
``if self.training``, in-place adds) runs unchanged. The graph is cut at the split module's
output into two graphs, run with ``torch.fx.Interpreter`` against the live ``network``
(hooks, ``.to(device)`` and ``train()``/``eval()`` act on the real modules):

* ``feature_maps(x)``: everything up to and including the split module's output;
* ``classify_feature_maps(fm)``: everything after it (pooling, flatten, the head).

What this requires of a custom model:

* ``forward`` of the root (and of the modules containing ``layer``) is symbolically
  traceable by ``torch.fx``: no Python control flow on tensor values, no shape-dependent
  branches. Modules below the split path are not traced and may do anything.
* the split module is called exactly once, and its output is the only value computed
  before it that the rest of the network uses (no skip connection across the cut);
* the output of the split module is N x C x h x w, or the tokens of a transformer that
  states its layout (:mod:`models.tokens`: ViT/DeiT tokens become the patch grid, Swin's
  channels-last maps are permuted; the class tokens set aside go back in for the rest of the
  network, within :meth:`GenericLCAM.same_image`); the network returns N x K logits.

A model that is not traceable can instead provide two methods, ``feature_maps(x)`` and
``classify_feature_maps(fm)``, with ``classify_feature_maps(feature_maps(x)) == model(x)``;
they are then used as they are (no tracing, ``layer`` must be None).

Every split is checked at construction: on a probe image of ``input_size`` pixels the two
parts must reproduce ``network(x)``.

Automatic layer (``layer=None``, :func:`find_feature_layer`): of the top-level modules the
eval-mode forward calls, the last that contains a convolution not followed by global pooling
(``layer4`` of a ResNet, ``features`` of VGG, DenseNet, MobileNet, EfficientNet, ConvNeXt and
SqueezeNet, ``inception5b`` of GoogLeNet, ``blocks.3`` of MaxViT), extended over activations
and normalisations that directly follow it (so the AM of a plain ``nn.Sequential`` CNN reads
``conv -> BN -> ReLU``, and DenseNet's reads the ReLU after ``features``). A transformer: the
output of its last block after its final norm, or, when the logits do not depend on the maps
there (a ViT's head reads only its class token), the output of the block before the last.
The split is traced in eval mode (the explained network: no auxiliary classifiers).

L-CAM-Fm needs maps that reach the decision: it is refused at a layer where they do not
(checked on the probe by the gradient of the head's input; see :attr:`GenericLCAM.grid_reaches_output`).

Images enter as RGB in [0, 1] and are normalised by the model, with the ``mean`` and
``std`` it is given, else those of the network's ``pretrained_cfg`` (timm's convention),
else ImageNet's (as for the reference variants); the model records them, so a checkpoint
rebuilds it alone. It records likewise the resize ``interpolation`` the network expects (the
``pretrained_cfg``'s, e.g. timm's ``"bicubic"``, else ``"bilinear"``), which the commands' image
transforms use, and the sizes of those images (:attr:`GenericLCAM.image_sizes`: the probe size as
the crop, the Resize of timm's eval transform for it). Train a classifier for this model on ``model.normalize(images)``, or
simply through ``model.classify(model.normalize(images))``.

Without building a network, :func:`backbone_image_sizes` gives the sizes a ``timm:NAME`` backbone
expects (timm's data config), and :func:`resolve_image_sizes` the commands' ``--input_size`` and
``--crop_size``: the flags given, else a model's or backbone's sizes, else 256 and 224.

The generic family's record is :data:`GENERIC_FAMILY`: the baselines explain the feature maps
the attention mechanism reads (``target_layer`` None), with RISE's VGG-16 mask count.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Callable, NamedTuple

import torch
import torch.nn.functional as F
import torchvision
from torch import fx, nn

from models.backbones import load_torchvision_classifier, read_state_dict
from models.families import BackboneFamily, interpolation_mode, register_family
from models.lcam import LCAM, LCAMOutput, variant
from models.tokens import TokenLayout, default_token_layers, token_config
from utils.core.errors import UserFileNotFoundError, UserTypeError, UserValueError, closest_names, state_dict_mismatch

__all__ = [
    "AS_BUILT",
    "GENERIC_ARCH",
    "GENERIC_FAMILY",
    "TIMM_PREFIX",
    "GenericLCAM",
    "backbone_image_sizes",
    "classifier_head",
    "find_feature_layer",
    "init_head_from_classifier",
    "load_network",
    "model",
    "resolve_image_sizes",
    "torchvision_classifiers",
]

GENERIC_ARCH = "generic"
DEFAULT_BACKBONE = "resnet18"
AS_BUILT = "as built"  # the weights of a custom network are those its callable gives
TIMM_PREFIX = "timm:"
_DEFAULT_CROP_PCT = 0.875  # timm's default, and 224 / 256: the reference's Resize 256, CenterCrop 224
_CUSTOM_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")

# Modules and functions that keep the feature maps' shape and meaning: the automatic split
# moves past them so the AM reads activated feature maps.
_ELEMENTWISE_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.BatchNorm2d,
    nn.GroupNorm,
    nn.InstanceNorm2d,
    nn.Identity,
)
_ELEMENTWISE_FUNCTIONS = (F.relu, torch.relu, F.relu6, F.leaky_relu, F.gelu, F.silu, F.hardswish, F.elu)
_ELEMENTWISE_METHODS = ("relu", "relu_")


def torchvision_classifiers() -> list[str]:
    """Names of torchvision's classification models (``torchvision.models.list_models``)."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def load_network(backbone: str | nn.Module, pretrained=False, num_classes: int | None = 1000) -> tuple[nn.Module, str]:
    """Build the classifier to explain.

    Args:
        backbone: a torchvision classification model name (``"resnet18"``,
            ``"convnext_tiny"``, see :func:`torchvision_classifiers`); ``"package.module:callable"``
            naming a function or class that returns an ``nn.Module`` (called with
            ``num_classes=`` when it accepts that argument); or an ``nn.Module`` instance.
        pretrained: torchvision names: as :func:`models.backbones.load_torchvision_classifier`
            (True = the default ImageNet weights, False = random init, a weights name or a
            state_dict path). Custom callables and modules: False/None/True keep the weights the
            callable gives; a path loads a state_dict of that module (strict).
        num_classes: classes of the classifier (torchvision names and callables accepting it).

    Returns:
        The module and a string naming its weights.

    Raises:
        ValueError: an unknown name, a module or attribute that cannot be imported.
        TypeError: the callable does not return an ``nn.Module``.
        FileNotFoundError: a weights path that does not exist.
    """
    if isinstance(backbone, nn.Module):
        return backbone, _load_custom_weights(backbone, pretrained, "the given module")
    if not isinstance(backbone, str):
        raise UserTypeError(
            f"'backbone' must be a model name, 'package.module:callable' or an nn.Module, got {type(backbone).__name__}"
        )
    if backbone.startswith(TIMM_PREFIX):
        return _load_timm(backbone[len(TIMM_PREFIX) :], pretrained, num_classes)
    if ":" in backbone:
        network = _build_custom(backbone, num_classes)
        return network, _load_custom_weights(network, pretrained, backbone)
    names = torchvision_classifiers()
    if backbone not in names:
        raise UserValueError(
            f"unknown backbone {backbone!r} (--backbone takes a torchvision classification model name, timm:NAME or "
            f"'package.module:callable' returning an nn.Module); {closest_names(backbone, names)}"
        )
    builder = torchvision.models.get_model_builder(backbone)
    weights_enum = torchvision.models.get_model_weights(backbone)
    return load_torchvision_classifier(builder, weights_enum, pretrained, 1000 if num_classes is None else num_classes)


def _load_timm(name: str, pretrained, num_classes: int | None) -> tuple[nn.Module, str]:
    """A timm classifier by name: True (or a torchvision-style name such as the commands'
    default ``IMAGENET1K_V1``, or ``"default"``) = timm's default pretrained weights, another
    word = that pretrained tag of timm (``augreg_in21k``), both through timm's own loading with
    the data config in ``pretrained_cfg``; the ``"timm:NAME.TAG"`` it returns (recorded in
    checkpoints) = those weights again; False/None/"none" = random init; a path = a state_dict."""
    timm = _import_timm(name)
    architecture = name.split(".")[0]  # a pretrained tag may follow: vit_small_patch16_224.augreg_in21k
    names = timm.list_models()
    if architecture not in names:
        raise UserValueError(
            f"unknown timm model {name!r} (--backbone {TIMM_PREFIX}NAME); {closest_names(architecture, names)}"
        )
    options = {} if num_classes is None else {"num_classes": num_classes}
    name, pretrained = _timm_request(name, pretrained)
    if pretrained is True:
        try:
            network = timm.create_model(name, pretrained=True, **options)
        except Exception as error:  # hub, network and file errors all mean "no weights"
            raise UserValueError(
                f"timm could not load the pretrained weights of {name!r} ({error.__class__.__name__}: {error}); "
                "pass --backbone_weights none or a state_dict path"
            ) from error
        config = network.pretrained_cfg
        return network, f"{TIMM_PREFIX}{config.get('architecture', name)}.{config.get('tag') or 'default'}"
    network = timm.create_model(name, pretrained=False, **options)
    if pretrained is None or pretrained is False or pretrained == "none":
        return network, "none"
    return network, _load_custom_weights(network, pretrained, f"{TIMM_PREFIX}{name}")


def _import_timm(name: str):
    try:
        import timm
    except ImportError as error:
        raise UserValueError(
            f"backbone '{TIMM_PREFIX}{name}' needs timm, which is not installed: pip install timm"
        ) from error
    return timm


def _timm_request(name: str, pretrained) -> tuple[str, Any]:
    """The timm name to build (with the pretrained tag ``pretrained`` names) and what is left of
    ``pretrained`` (True: timm's pretrained weights), as :func:`_load_timm` reads them."""
    if isinstance(pretrained, str) and pretrained.startswith(TIMM_PREFIX):  # as a checkpoint records them
        return pretrained[len(TIMM_PREFIX) :], True
    if isinstance(pretrained, str) and re.fullmatch(r"\w+", pretrained) and pretrained != "none":
        if pretrained.lower() != "default" and not pretrained.isupper():
            name = f"{name.split('.')[0]}.{pretrained}"  # a pretrained tag of timm
        return name, True
    return name, pretrained


def _resize_for(crop_size: int, config: Mapping) -> int:
    """The Resize of the smaller edge for a ``crop_size`` crop in timm's eval transform
    (``transforms_imagenet_eval``): floor(crop_size / crop_pct), with the data config's
    ``crop_pct`` [0.875: 256 for 224]."""
    return math.floor(crop_size / (config.get("crop_pct") or _DEFAULT_CROP_PCT))


def backbone_image_sizes(backbone: str | nn.Module, pretrained=False) -> tuple[int, int]:
    """The (Resize of the smaller edge, square crop) of the images ``backbone`` expects, known
    without building it: for ``"timm:NAME"``, timm's data config (``pretrained_cfg``) of the
    weights ``pretrained`` asks for (read as :func:`load_network` does): its ``input_size`` as the
    crop and floor(crop / ``crop_pct``) as the Resize, as timm's eval transform (which then crops
    the centre; the commands do so also for its ``"squash"`` and ``"border"`` crop modes); for any
    other backbone, or a timm name it does not know, the reference's (256, 224).

    Raises:
        ValueError: timm is not installed, or its data config asks for images that are not square.
    """
    if not (isinstance(backbone, str) and backbone.startswith(TIMM_PREFIX)):
        return LCAM.image_sizes
    name = backbone[len(TIMM_PREFIX) :]
    timm = _import_timm(name)
    name, _ = _timm_request(name, pretrained)
    try:
        config = timm.get_pretrained_cfg(name)
    except RuntimeError:  # an unknown pretrained tag: building the network says so
        config = None
    if config is None:
        return LCAM.image_sizes
    config = config.to_dict()
    height, width = config["input_size"][-2:]
    if height != width:
        raise UserValueError(
            f"timm's data config of {name!r} asks for {height} x {width} images, but the commands crop squares: "
            "give --input_size and --crop_size"
        )
    return _resize_for(width, config), width


def resolve_image_sizes(
    input_size: int | None, crop_size: int | None, source: Any = None, pretrained=False
) -> tuple[int, int]:
    """The commands' ``--input_size`` (Resize of the smaller edge) and ``--crop_size`` (square
    crop): each one given, else the one ``source`` expects: its ``image_sizes`` (a model restored
    from a checkpoint: those it was trained at; a variant class), else those of a backbone name
    (:func:`backbone_image_sizes`, with ``pretrained``), else the reference's 256 and 224.

    Raises:
        ValueError: the crop is larger than the Resize, or an error of :func:`backbone_image_sizes`.
    """
    given = (input_size, crop_size)
    if None in given:
        expected = getattr(source, "image_sizes", None) or backbone_image_sizes(source, pretrained)
        input_size, crop_size = (expected[index] if size is None else size for index, size in enumerate(given))
    if crop_size > input_size:
        origin = "" if None not in given else " (the size not given is the model's; give both)"
        raise UserValueError(f"'--crop_size' {crop_size} is larger than '--input_size' {input_size}{origin}")
    return input_size, crop_size


def _build_custom(spec: str, num_classes: int | None) -> nn.Module:
    if not _CUSTOM_PATTERN.match(spec):
        raise UserValueError(f"custom backbone {spec!r} must look like 'package.module:callable'")
    module_name, attribute_path = spec.split(":")
    try:
        target = importlib.import_module(module_name)
    except ImportError as error:
        raise UserValueError(f"custom backbone {spec!r}: cannot import module {module_name!r} ({error})") from error
    for attribute in attribute_path.split("."):
        if not hasattr(target, attribute):
            raise UserValueError(f"custom backbone {spec!r}: {module_name!r} has no attribute {attribute_path!r}")
        target = getattr(target, attribute)
    if not callable(target):
        raise UserTypeError(f"custom backbone {spec!r} is not callable")
    try:
        accepts_num_classes = "num_classes" in inspect.signature(target).parameters
    except (TypeError, ValueError):
        accepts_num_classes = False
    network = target(num_classes=num_classes) if accepts_num_classes and num_classes is not None else target()
    if not isinstance(network, nn.Module):
        raise UserTypeError(f"custom backbone {spec!r} returned a {type(network).__name__}, expected an nn.Module")
    return network


def _load_custom_weights(network: nn.Module, pretrained, source: str) -> str:
    if pretrained is None or isinstance(pretrained, bool) or pretrained == "none":
        return AS_BUILT
    path = os.fspath(pretrained)
    if not os.path.isfile(path):
        raise UserFileNotFoundError(f"weights file for {source} not found: {path!r} (--backbone_weights)")
    state_dict = read_state_dict(path, source)
    problem = state_dict_mismatch(network.state_dict(), state_dict)
    if problem:
        raise UserValueError(f"{path!r} is not a state_dict of {source} (--backbone_weights): {problem}")
    network.load_state_dict(state_dict)
    return os.path.abspath(path)


def find_feature_layer(network: nn.Module) -> str:
    """The layer whose output the AM reads by default (see the module docstring; the extension
    over activations happens when the graph is split).

    A transformer (a network stating its tokens, see :mod:`models.tokens`): the output of its
    last block, after its final norm. A CNN: of the top-level modules its forward calls in
    eval mode (so auxiliary classifiers, which run only in training, are not candidates), the
    last that holds a convolution and no global pooling (a classifier made of a 1x1 class
    convolution and global pooling, as SqueezeNet's, gives 1 x 1 maps). A network whose
    forward cannot be traced: the top-level child that holds its last convolution.

    Raises:
        ValueError: ``network`` has no convolution, or none before its global pooling.
    """
    token_layers = default_token_layers(network)
    if token_layers:
        return token_layers[0]
    convolutions = [name for name, module in network.named_modules() if isinstance(module, nn.modules.conv._ConvNd)]
    if not convolutions:
        raise UserValueError(
            f"{type(network).__name__} has no convolution; pass the feature layer explicitly ('layer')"
        )
    called = _called_modules(network)
    if called is None:
        return convolutions[-1].split(".")[0]
    stages = [name for name in called if _is_convolutional_stage(network.get_submodule(name))]
    if not stages:
        raise UserValueError(
            f"{type(network).__name__} calls no convolutional module before its global pooling; pass the "
            "feature layer explicitly ('layer', --layer)"
        )
    return stages[-1]


def _called_modules(network: nn.Module) -> list[str] | None:
    """The modules the network's own forward calls, in order (its eval-mode trace with every
    submodule a leaf); None when the forward cannot be traced."""
    try:
        graph = _trace(network, "")
    except Exception:  # fx raises many types; all mean "not traceable"
        return None
    return [node.target for node in graph.nodes if node.op == "call_module"]


def _is_convolutional_stage(module: nn.Module) -> bool:
    """Whether ``module`` holds a convolution not followed by global pooling (a pooling
    before the last convolution, as in squeeze-and-excitation blocks, does not count)."""
    modules = list(module.modules())
    convolutions = [i for i, each in enumerate(modules) if isinstance(each, nn.modules.conv._ConvNd)]
    poolings = [
        i
        for i, each in enumerate(modules)
        if isinstance(each, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)) and each.output_size in (1, (1, 1))
    ]
    return bool(convolutions) and not (poolings and poolings[-1] > convolutions[-1])


@contextlib.contextmanager
def _in_eval_mode(network: nn.Module) -> Iterator[None]:
    """Every submodule in eval mode inside; each one's own mode restored after."""
    modes = {module: module.training for module in network.modules()}
    network.eval()
    try:
        yield
    finally:
        for module, mode in modes.items():
            module.train(mode)


class _SplitTracer(fx.Tracer):
    """Traces the root and the ancestors of ``layer``; every other module is a leaf."""

    def __init__(self, layer: str) -> None:
        super().__init__()
        self.layer = layer

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return not (qualified_name == "" or self.layer.startswith(qualified_name + "."))


def _trace(network: nn.Module, layer: str) -> fx.Graph:
    """The graph of ``network``'s forward as it explains (eval mode: auxiliary classifiers
    off), its optional arguments fixed at their defaults (timm's ``attn_mask=None``)."""
    parameters = list(inspect.signature(network.forward).parameters.values())[1:]
    defaults = {each.name: each.default for each in parameters if each.default is not inspect.Parameter.empty}
    with _in_eval_mode(network):
        return _SplitTracer(layer).trace(network, concrete_args=defaults or None)


def _split_graph(network: nn.Module, layer: str, extend: bool) -> tuple[fx.Graph, fx.Graph, str]:
    """The graphs before and after ``layer``'s output, and the name of the cut node."""
    try:
        network.get_submodule(layer)
    except AttributeError as error:
        children = ", ".join(name for name, _ in network.named_children())
        raise UserValueError(
            f"'layer' {layer!r} is not a module of {type(network).__name__} (top-level: {children})"
        ) from error
    try:
        graph = _trace(network, layer)
    except Exception as error:  # fx raises many types; all mean "not traceable"
        raise UserValueError(
            f"cannot trace {type(network).__name__}.forward with torch.fx to split it at {layer!r} "
            f"({error.__class__.__name__}: {error}); make its forward traceable or give the model "
            "feature_maps() and classify_feature_maps() methods"
        ) from error
    calls = [node for node in graph.nodes if node.op == "call_module" and node.target == layer]
    if len(calls) != 1:
        raise UserValueError(
            f"'layer' {layer!r} is called {len(calls)} times in the forward pass; L-CAM needs a module called once"
        )
    cut = calls[0]
    while extend and len(cut.users) == 1 and _is_elementwise(next(iter(cut.users)), cut, network):
        cut = next(iter(cut.users))
    nodes = list(graph.nodes)
    position = nodes.index(cut)

    prefix = fx.Graph()
    prefix_env: dict[fx.Node, fx.Node] = {}
    for node in nodes[: position + 1]:
        prefix_env[node] = prefix.node_copy(node, lambda value: prefix_env[value])
    prefix.output(prefix_env[cut])

    suffix = fx.Graph()
    suffix_env = {cut: suffix.placeholder("feature_maps")}

    def _lookup(value: fx.Node) -> fx.Node:
        if value in suffix_env:
            return suffix_env[value]
        if value.op == "get_attr":
            suffix_env[value] = suffix.node_copy(value, _lookup)
            return suffix_env[value]
        raise UserValueError(
            f"the network after {layer!r} also uses {value.name!r}, computed before it (a connection across "
            "the split); choose a layer whose output is all the rest of the network reads"
        )

    for node in nodes[position + 1 :]:
        suffix_env[node] = suffix.node_copy(node, _lookup)
    for part in (prefix, suffix):
        part.eliminate_dead_code(is_impure_node=lambda node: node.op in ("placeholder", "output"))
        part.lint()
    return prefix, suffix, cut.name


def _is_elementwise(node: fx.Node, source: fx.Node, network: nn.Module) -> bool:
    if not node.args or node.args[0] is not source:
        return False
    if node.op == "call_module":
        return isinstance(network.get_submodule(node.target), _ELEMENTWISE_MODULES)
    if node.op == "call_function":
        return node.target in _ELEMENTWISE_FUNCTIONS
    return node.op == "call_method" and node.target in _ELEMENTWISE_METHODS


def _mutates_input(graph: fx.Graph, network: nn.Module) -> bool:
    """Whether a node of ``graph`` may modify its placeholder in place."""
    placeholder = next(node for node in graph.nodes if node.op == "placeholder")
    for user in placeholder.users:
        if user.kwargs.get("inplace", False) or (user.op == "call_method" and str(user.target).endswith("_")):
            return True
        if user.op == "call_module" and getattr(network.get_submodule(user.target), "inplace", False):
            return True
    return False


class GenericLCAM(LCAM):
    """L-CAM on any classifier, CNN or transformer (see the module docstring for the split).

    Args:
        network: the classifier, images (normalised with ``mean``/``std``) -> N x K logits.
        layer: dotted name of the module whose output the AM reads; None = automatic.
        input_size: side of the square probe image that checks the split (use a size the
            network accepts, e.g. 64 for a network with a fixed-size head trained at 64 px).
        mean, std: the network's input normalisation [its ``pretrained_cfg``'s when it has
            one, else ImageNet's].
        interpolation: the resize filter of the images it expects, a torchvision
            ``InterpolationMode`` name [its ``pretrained_cfg``'s when it has one, else
            ``"bilinear"``].
        resize_size: the Resize of the smaller edge of the images it expects, cropped to
            ``input_size`` [floor(input_size / crop_pct) as timm's eval transform, with its
            ``pretrained_cfg``'s ``crop_pct``, else 0.875: 256 for 224].
        **settings: ``apply_cam_to``, ``loss``, ``backbone_mode``, ``mask_loss_maps`` of
            :class:`models.lcam.LCAM`.

    Attributes:
        token_layout: how the layer's output maps to the N x C x h x w grid the AM reads.
        grid_reaches_output: whether the classifier's decision depends on those maps (False
            after a ViT's last block); L-CAM-Fm and the gradient baselines need it.
        image_sizes: ``(resize_size, input_size)``, the commands' sizes when not given.

    Raises:
        ValueError: no such layer, an untraceable forward, a connection across the split,
            an output that maps to no grid of the image (or to one cell), parts that do not
            reproduce the network, or L-CAM-Fm where the maps do not reach the output.
    """

    arch = GENERIC_ARCH

    def __init__(
        self,
        network: nn.Module,
        layer: str | None = None,
        input_size: int = 224,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        interpolation: str | None = None,
        resize_size: int | None = None,
        **settings,
    ) -> None:
        own_methods = callable(getattr(network, "feature_maps", None)) and callable(
            getattr(network, "classify_feature_maps", None)
        )
        if own_methods and layer is not None:
            raise UserValueError(
                f"'layer' {layer!r} given, but the network splits itself (feature_maps/classify_feature_maps)"
            )
        if own_methods:
            prefix = suffix = None
            cut_name, chosen_layer, config = "feature_maps", "feature_maps", None
            probe = _probe(network, prefix, suffix, input_size, chosen_layer, config)
        else:
            config = token_config(network)
            # A class-token transformer's last block reaches the logits only through its class
            # token: by default read the block before it, whose patch tokens the last block reads.
            candidates = (
                [layer] if layer is not None else default_token_layers(network) or [find_feature_layer(network)]
            )
            for position, candidate in enumerate(candidates):
                try:
                    split = _split_graph(network, candidate, extend=layer is None)
                    candidate_probe = _probe(network, *split[:2], input_size, candidate, config)
                except UserValueError:
                    if position == 0:
                        raise
                    break  # the block before the last does not map to a grid (CaiT): keep the last
                (prefix, suffix, cut_name), probe, chosen_layer = split, candidate_probe, candidate
                if probe.grid_reaches_output:
                    break
        if settings.get("apply_cam_to") == "feature_maps" and not probe.grid_reaches_output:
            raise UserValueError(
                f"L-CAM-Fm (apply_cam_to 'feature_maps') cannot be trained at 'layer' {chosen_layer!r}: "
                f"{type(network).__name__}'s output does not depend on the maps there (after this layer it reads "
                "only its class token), so masking them changes nothing; use L-CAM-Img (apply_cam_to 'image') "
                "or an earlier layer whose later blocks read the patch tokens (--layer)"
            )
        config_dict = getattr(network, "pretrained_cfg", None) or {}
        mean = config_dict.get("mean") if mean is None else mean
        std = config_dict.get("std") if std is None else std
        interpolation = (config_dict.get("interpolation") or "bilinear") if interpolation is None else interpolation
        interpolation_mode(interpolation)  # checks the name
        resize_size = _resize_for(input_size, config_dict) if resize_size is None else resize_size
        if not isinstance(resize_size, int) or resize_size < input_size:
            raise UserValueError(f"'resize_size' must be an integer >= 'input_size' {input_size}, got {resize_size!r}")
        super().__init__(in_channels=probe.channels, num_classes=probe.num_classes, mean=mean, std=std, **settings)
        self.add_backbone_modules(network=network)
        self.layer = chosen_layer
        self.cut_node = cut_name
        self.backbone_name = type(network).__name__
        self.backbone_weights = "unknown"
        self.input_size = input_size
        self.interpolation = interpolation
        self.image_sizes = (resize_size, input_size)
        self.token_layout = probe.layout
        self.grid_reaches_output = probe.grid_reaches_output
        self._prefix_graph = prefix
        self._suffix_graph = suffix
        self._clone_feature_maps = suffix is not None and _mutates_input(suffix, network)
        self._prefix_tokens: list[torch.Tensor | None] | None = None

    @classmethod
    def load_network(
        cls, pretrained=False, num_classes: int | None = 1000, backbone: str | nn.Module = DEFAULT_BACKBONE, **_
    ) -> tuple[nn.Module, str]:
        """The classifier alone: :func:`load_network` of ``backbone``."""
        return load_network(backbone, pretrained, num_classes)

    @classmethod
    def build(
        cls,
        arch: str = GENERIC_ARCH,
        pretrained=False,
        num_classes: int | None = 1000,
        backbone: str | nn.Module = DEFAULT_BACKBONE,
        layer: str | None = None,
        input_size: int = 224,
        **settings,
    ) -> GenericLCAM:
        """Build the classifier (:func:`load_network`), split it, freeze it, add the AM.

        ``num_classes=None`` takes the number of classes from the network's output.

        Raises:
            ValueError: the network's output does not have ``num_classes`` classes, or any
                error of :func:`load_network` and :class:`GenericLCAM`.
        """
        network, weights_name = cls.load_network(pretrained, num_classes, backbone)
        lcam = cls(network, layer=layer, input_size=input_size, **settings)
        if num_classes is not None and lcam.num_classes != num_classes:
            raise UserValueError(
                f"backbone {backbone if isinstance(backbone, str) else type(backbone).__name__!r} outputs "
                f"{lcam.num_classes} classes, but num_classes={num_classes}"
            )
        lcam.arch, lcam.backbone_weights = arch, weights_name
        if isinstance(backbone, str):
            lcam.backbone_name = backbone
        lcam.freeze_backbone()
        return lcam

    def build_settings(self) -> dict[str, Any]:
        """Also the backbone's name (a torchvision name or ``package.module:callable``), the
        split layer, the probe size (the crop) and the Resize, the normalisation and the resize
        interpolation."""
        return {
            **super().build_settings(),
            "backbone": self.backbone_name,
            "layer": self.layer,
            "input_size": self.input_size,
            "resize_size": self.image_sizes[0],
            "mean": list(self.normalization[0]),
            "std": list(self.normalization[1]),
            "interpolation": self.interpolation,
        }

    @property
    def backbone_label(self) -> str:
        """``"generic:<backbone>"``: the network, e.g. ``generic:resnet18``."""
        return f"{GENERIC_ARCH}:{self.backbone_name}"

    @contextlib.contextmanager
    def same_image(self) -> Iterator[None]:
        """Inside, :meth:`classify_feature_maps` puts back the class/distillation/register tokens
        that the latest :meth:`feature_maps` set aside (a ViT's later blocks and head read them):
        what the forward pass, the Fm masked pass and the baselines' classifier run in."""
        outer = self._prefix_tokens
        self._prefix_tokens = [None]
        try:
            yield
        finally:
            self._prefix_tokens = outer

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> LCAMOutput:
        with self.same_image():
            return super().forward(images, labels)

    def classify(self, normalized_images: torch.Tensor) -> torch.Tensor:
        with self.same_image():
            return super().classify(normalized_images)

    def feature_maps(self, normalized_images: torch.Tensor) -> torch.Tensor:
        """The N x C x h x w maps the AM reads: the layer's output, a transformer's tokens
        reshaped to the patch grid (:class:`models.tokens.TokenLayout`)."""
        if self._prefix_graph is None:
            return self.network.feature_maps(normalized_images)
        output = fx.Interpreter(self.network, graph=self._prefix_graph).run(normalized_images)
        grid, prefix_tokens = self.token_layout.to_grid(output, tuple(normalized_images.shape[-2:]))
        if self._prefix_tokens is not None:
            self._prefix_tokens[0] = prefix_tokens
        return grid

    def classify_feature_maps(self, feature_maps: torch.Tensor) -> torch.Tensor:
        """The rest of the network on N x C x h x w maps (put back in the layer's layout).

        Raises:
            ValueError: the network also reads prefix tokens after the layer and this is
                called outside :meth:`same_image` after :meth:`feature_maps`.
        """
        if self._suffix_graph is None:
            return self.network.classify_feature_maps(feature_maps)
        prefix_tokens = self._prefix_tokens[0] if self._prefix_tokens is not None else None
        tokens = self.token_layout.to_tokens(feature_maps, prefix_tokens)
        if self._clone_feature_maps:  # the rest of the network works in place on its input
            tokens = tokens.clone()
        return fx.Interpreter(self.network, graph=self._suffix_graph).run(tokens)

    def extra_repr(self) -> str:
        return f"backbone={self.backbone_name!r}, layer={self.layer!r}, cut={self.cut_node!r}, " + super().extra_repr()


def _stays_one_cell(network: nn.Module, prefix, input_size: int, images: torch.Tensor) -> bool:
    """Whether the layer's output is still 1 x 1 for an image of twice the size (a 1 x 1 map
    of a small image is only a small grid; after global pooling it stays one cell)."""
    larger = F.interpolate(images, scale_factor=2.0, mode="bilinear", align_corners=False)
    try:
        output = network.feature_maps(larger) if prefix is None else fx.Interpreter(network, graph=prefix).run(larger)
    except Exception:  # a network of fixed input size: the size cannot tell
        return False
    return output.dim() == 4 and output.shape[-2:] == (1, 1)


class _Probe(NamedTuple):
    """What the probe image showed of a split."""

    layout: TokenLayout
    channels: int
    num_classes: int
    grid_reaches_output: bool


def _probe(network: nn.Module, prefix, suffix, input_size: int, layer: str, config) -> _Probe:
    """Run the split on one random image and check it: the layer's output maps to a grid of
    more than one cell, and the parts (through the grid and back) reproduce the network.
    Also whether the output depends on the grid at all (it does not after a ViT's last block)."""
    if not isinstance(input_size, int) or input_size < 8:
        raise UserValueError(f"'input_size' must be an integer >= 8, got {input_size!r}")
    images = torch.rand(2, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
    parameter = next(network.parameters(), None)
    if parameter is not None:
        images = images.to(device=parameter.device, dtype=parameter.dtype)
    with _in_eval_mode(network), torch.no_grad():
        try:
            expected = network(images)
            if prefix is None:
                output = network.feature_maps(images)
            else:
                output = fx.Interpreter(network, graph=prefix).run(images)
        except ValueError:
            raise
        except Exception as error:
            raise UserValueError(
                f"{type(network).__name__} failed on a {input_size} x {input_size} probe image "
                f"({error.__class__.__name__}: {error}); pass an 'input_size' it accepts"
            ) from error
        if not torch.is_tensor(expected) or expected.dim() != 2:
            raise UserValueError(f"{type(network).__name__} must return N x K logits, got {_describe(expected)}")
        if not torch.is_tensor(output) or (prefix is None and output.dim() != 4):
            raise UserValueError(
                f"the output of 'layer' {layer!r} must be N x C x h x w feature maps, got {_describe(output)}"
            )
        layout = TokenLayout.of_output(output, config, layer)
        grid, prefix_tokens = layout.to_grid(output, (input_size, input_size))
        if grid.shape[-2:] == (1, 1) and _stays_one_cell(network, prefix, input_size, images):
            raise UserValueError(
                f"the output of 'layer' {layer!r} is 1 x 1 whatever the image size (it follows global pooling): "
                "a CAM of one cell shows nothing; choose an earlier layer (--layer)"
            )

        def classify(maps: torch.Tensor) -> torch.Tensor:
            tokens = layout.to_tokens(maps, prefix_tokens).clone()
            if prefix is None:
                return network.classify_feature_maps(tokens)
            return fx.Interpreter(network, graph=suffix).run(tokens)

        logits = classify(grid)
        if logits.shape != expected.shape or not torch.allclose(logits, expected, rtol=1e-4, atol=1e-5):
            raise UserValueError(
                f"split at {layer!r}, the two parts do not reproduce {type(network).__name__}'s output; "
                "its forward may depend on values the trace cannot see"
            )
        reaches_output = _grid_reaches_head(network, suffix, classify, grid)
    return _Probe(layout, grid.size(1), expected.size(1), reaches_output)


def _grid_reaches_head(network: nn.Module, suffix, classify: Callable, grid: torch.Tensor) -> bool:
    """Whether any cell of ``grid`` moves the input of the network's last module (its head),
    by the gradient of a random projection. The head's input rather than the logits, so that a
    head initialised at zero (torchvision's ViT) does not hide the dependence."""
    modules = [node.target for node in suffix.nodes if node.op == "call_module"] if suffix is not None else []
    head_inputs: list[torch.Tensor] = []
    hook = (
        network.get_submodule(modules[-1]).register_forward_pre_hook(lambda _, args: head_inputs.append(args[0]))
        if modules
        else None
    )
    try:
        with torch.enable_grad():
            cells = grid.detach().clone().requires_grad_(True)
            logits = classify(cells)
            reached = head_inputs[-1] if head_inputs and torch.is_tensor(head_inputs[-1]) else logits
            weights = torch.randn(reached.shape, generator=torch.Generator().manual_seed(0)).to(reached)
            (gradient,) = torch.autograd.grad((reached * weights).sum(), cells, allow_unused=True)
    finally:
        if hook is not None:
            hook.remove()
    return gradient is not None and bool(gradient.abs().sum() > 0)


def classifier_head(model: LCAM) -> nn.Linear | None:
    """The classifier's last linear layer when the network ends with global average pooling
    and that one layer (``logits = fc(mean_xy(FM))``), else None.

    Checked by value, not by name: on random non-negative feature maps of the AM's input
    shape, ``model.classify_feature_maps`` must equal the layer applied to their spatial
    mean (any ``nn.Linear`` of the network with C inputs and K outputs is tried).
    """
    candidates = [
        module
        for module in model.modules()
        if isinstance(module, nn.Linear)
        and module.in_features == model.attnM.op.in_channels
        and module.out_features == model.attnM.op.out_channels
    ]
    layout = getattr(model, "token_layout", None)
    if not candidates or (layout is not None and layout.kind != "grid"):
        return None  # a transformer's head reads normalised or class tokens, not pooled maps
    weight = model.attnM.op.weight
    generator = torch.Generator().manual_seed(0)
    probe = torch.rand(2, weight.size(1), 3, 5, generator=generator).to(device=weight.device, dtype=weight.dtype)
    with _in_eval_mode(model), torch.no_grad():
        logits = model.classify_feature_maps(probe)
        for layer in candidates:
            expected = layer(probe.mean(dim=(2, 3)))
            if logits.shape == expected.shape and torch.allclose(logits, expected, rtol=1e-4, atol=1e-5):
                return layer
    return None


def init_head_from_classifier(model: LCAM, scale: float = 1.0) -> nn.Linear:
    """Start the AM from the classifier's last linear layer (``scale`` x its weights and bias).

    For a network ending with global average pooling and one linear layer ``fc``, the AM's
    1x1 convolution then computes ``fc.weight[k] . FM(x, y) + fc.bias[k]`` at every position:
    the class activation map of Zhou et al. (CVPR 2016), whose spatial mean is the
    classifier's logit. ``scale`` < 1 leaves the min-max normalised maps unchanged but keeps
    the sigmoid of the training masks out of saturation.

    Returns:
        The linear layer copied.

    Raises:
        ValueError: ``scale`` is not positive, or the network does not end with global
            pooling and one linear layer (see :func:`classifier_head`).
    """
    if not scale > 0:
        raise UserValueError(f"'scale' must be positive, got {scale!r}")
    layer = classifier_head(model)
    if layer is None:
        raise UserValueError(
            f"{getattr(model, 'backbone_label', type(model).__name__)} does not end with global average pooling "
            "and one linear layer, so its head cannot start from the classifier: use head_init 'random'"
        )
    with torch.no_grad():
        model.attnM.op.weight.copy_(scale * layer.weight.view_as(model.attnM.op.weight))
        if layer.bias is not None:
            model.attnM.op.bias.copy_(scale * layer.bias)
        else:
            model.attnM.op.bias.zero_()
    return layer


def _describe(value) -> str:
    return f"shape {tuple(value.shape)}" if torch.is_tensor(value) else f"a {type(value).__name__}"


GENERIC_FAMILY = register_family(
    BackboneFamily(
        name=GENERIC_ARCH,
        title="any classifier",
        feature_layer="the last convolutional stage, or the 'layer' setting",
        lcam_class=GenericLCAM,
        builder=None,
        weights=None,
        target_layer=None,
        epochs=8,
        train_list=None,
        rise_masks=4000,
    )
)

model: Callable[..., LCAM] = variant(
    GENERIC_FAMILY,
    GENERIC_ARCH,
    """L-CAM (Img by default) on any classifier, CNN or transformer: ``backbone=`` a torchvision
    name, ``"timm:NAME"`` or ``"package.module:callable"``, ``layer=`` a dotted module name (None = automatic).""",
    apply_cam_to="image",
    loss="lcam",
)

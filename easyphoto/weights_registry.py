"""The model table: every model file EasyPhoto uses (SPEC §0), where it comes from, its licence.

Each entry is an immutable :class:`ModelSpec`. ``sha256`` and ``size`` are filled in only where
the publisher's value is known (Git-LFS object id and byte count on the Hub, or the published
release asset); they are ``None`` where it is not, never guessed. Files mirrored by the EasyPhoto
authors on their OSS bucket may differ byte-wise from any upstream copy, so they carry none.

``commercial_use`` is ``True`` only where the licence clearly allows commercial use; a licence
that forbids it, or one we could not confirm, is ``False`` and the file needs the user's explicit
acceptance before its first download (see ``easyphoto.weights.ModelStore.download``).

Roles are stable string ids used across the code base (``sd15_base``, ``controlnet_sd15_canny``,
``insightface_buffalo_l``, ...).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Iterable, Mapping, Optional

#: Where a file is fetched from.
SOURCES = frozenset({"hf", "modelscope", "url"})
#: The WebUI model folders a file can belong to (HOST.md "Model folders").
HOST_FOLDERS = ("Stable-diffusion", "VAE", "ControlNet", "Lora")
KINDS = frozenset({"checkpoint", "vae", "controlnet", "lora", "annotator", "face", "tokenizer"})
FAMILIES = frozenset({"sd15", "sdxl", "any"})

_SHA256 = re.compile(r"[0-9a-f]{64}")

# Licence strings used more than once.
OPENRAIL_M = "CreativeML-OpenRAIL-M"
OPENRAIL_PP = "CreativeML-OpenRAIL++-M"
MODELSCOPE_APACHE = "Apache-2.0 (ModelScope model card)"
OPENPOSE = "CMU OpenPose licence: academic / non-commercial research use only"
EP_OSS = "https://pai-aigc-photog.oss-cn-hangzhou.aliyuncs.com/webui/"
INSIGHTFACE_RELEASES = "https://github.com/deepinsight/insightface/releases/download/"


@dataclass(frozen=True)
class ModelSpec:
    """One model file (or, for ModelScope and unpacked archives, one model folder).

    ``filename`` is the local file name; for ``unpack`` specs it is the archive's name and the
    model lives in the folder of the same name without ``.zip``; for ModelScope specs it is the
    folder name. ``repo_file`` is the path inside a Hub repo when it differs from ``filename``.
    ``host_folder`` names the WebUI model folder the file belongs in (``None``: EasyPhoto's own
    models folder); ``subdir`` is the folder under the standalone models root.
    ``size`` is in bytes.
    """

    role: str
    title: str
    kind: str
    family: str
    source: str
    filename: str
    licence: str
    commercial_use: bool
    repo: Optional[str] = None
    repo_file: Optional[str] = None
    revision: Optional[str] = None
    url: Optional[str] = None
    size: Optional[int] = None
    sha256: Optional[str] = None
    host_folder: Optional[str] = None
    subdir: str = ""
    optional: bool = False
    unpack: bool = False
    licence_url: Optional[str] = None
    notes: str = ""

    def __post_init__(self) -> None:
        """Reject inconsistent entries early (a typo in the table is a programming error)."""
        problems = []
        if self.source not in SOURCES:
            problems.append(f"source {self.source!r}")
        if self.source in ("hf", "modelscope") and not self.repo:
            problems.append("repo missing")
        if self.source == "url" and not self.url:
            problems.append("url missing")
        if self.kind not in KINDS or self.family not in FAMILIES:
            problems.append(f"kind/family {self.kind!r}/{self.family!r}")
        if self.sha256 is not None and not _SHA256.fullmatch(self.sha256):
            problems.append("sha256 must be 64 lower-case hex digits")
        if self.host_folder is not None and self.host_folder not in HOST_FOLDERS:
            problems.append(f"host folder {self.host_folder!r}")
        if self.unpack and not self.filename.endswith(".zip"):
            problems.append("unpack needs a .zip file")
        if problems:
            raise ValueError(f"model spec {self.role!r}: " + ", ".join(problems))

    @property
    def is_folder(self) -> bool:
        """True when the model on disk is a folder (ModelScope snapshot, unpacked archive)."""
        return self.source == "modelscope" or self.unpack

    @property
    def local_name(self) -> str:
        """The name of the file or folder the model is used from."""
        return self.filename[: -len(".zip")] if self.unpack else self.filename

    @property
    def source_label(self) -> str:
        """Human-readable origin, e.g. ``huggingface.co/lllyasviel/Annotators, file x.pth``."""
        rev = f" (revision {self.revision})" if self.revision else ""
        if self.source == "hf":
            return f"huggingface.co/{self.repo}, file {self.repo_file or self.filename}{rev}"
        if self.source == "modelscope":
            return f"modelscope.cn model {self.repo}{rev}"
        return str(self.url)


def _hf(role: str, title: str, kind: str, family: str, repo: str, filename: str, **kw) -> ModelSpec:
    """A file in a Hugging Face Hub repository."""
    return ModelSpec(role=role, title=title, kind=kind, family=family, source="hf", repo=repo,
                     filename=filename, revision=kw.pop("revision", "main"), **kw)


def _ms(role: str, title: str, model_id: str, revision: Optional[str], **kw) -> ModelSpec:
    """A ModelScope model, stored as a folder ``modelscope/<owner>/<name>``."""
    owner, name = model_id.split("/", 1)
    kw.setdefault("licence", MODELSCOPE_APACHE)
    kw.setdefault("commercial_use", True)
    return ModelSpec(role=role, title=title, kind="face", family="any", source="modelscope",
                     repo=model_id, revision=revision, filename=name,
                     subdir=f"modelscope/{owner}", **kw)


def _url(role: str, title: str, kind: str, family: str, url: str, filename: str, **kw) -> ModelSpec:
    """A file behind a plain HTTPS URL."""
    return ModelSpec(role=role, title=title, kind=kind, family=family, source="url", url=url,
                     filename=filename, **kw)


def _diffusion_models() -> tuple[ModelSpec, ...]:
    """Checkpoints, VAEs and the style LoRA."""
    return (
        _url("sd15_base", "ChilloutMix-Ni fp16 (reference SD1.5 base)", "checkpoint", "sd15",
             EP_OSS + "ChilloutMix-ni-fp16.safetensors",
             "Chilloutmix-Ni-pruned-fp16-fix.safetensors",
             host_folder="Stable-diffusion", subdir="Stable-diffusion",
             licence=OPENRAIL_M + " plus the creator's Civitai terms (civitai.com/models/6424; "
                     "selling generated images not permitted)",
             commercial_use=False, licence_url="https://civitai.com/models/6424",
             notes="mirrored by the EasyPhoto authors; any SD1.5 checkpoint can replace it"),
        _hf("sd15_v15", "Stable Diffusion v1.5 (pruned EMA)", "checkpoint", "sd15",
            "stable-diffusion-v1-5/stable-diffusion-v1-5", "v1-5-pruned-emaonly.safetensors",
            size=4265146304,
            sha256="6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa",
            host_folder="Stable-diffusion", subdir="Stable-diffusion", optional=True,
            licence=OPENRAIL_M, commercial_use=True),
        _hf("sdxl_base", "Stable Diffusion XL base 1.0", "checkpoint", "sdxl",
            "stabilityai/stable-diffusion-xl-base-1.0", "sd_xl_base_1.0.safetensors",
            size=6938078334,
            sha256="31e35c80fc4829d14f90153f4c74cd59c90b779f6afe05a74cd6120b893f7e5b",
            host_folder="Stable-diffusion", subdir="Stable-diffusion", optional=True,
            licence=OPENRAIL_PP, commercial_use=True),
        _hf("vae_sd15", "VAE ft-MSE 840000 EMA (SD1.5)", "vae", "sd15",
            "stabilityai/sd-vae-ft-mse-original", "vae-ft-mse-840000-ema-pruned.safetensors",
            size=334641190,
            sha256="735e4c3a447a3255760d7f86845f09f937809baa529c17370d83e4c3758f3c75",
            host_folder="VAE", subdir="VAE", licence="MIT", commercial_use=True),
        _hf("vae_sdxl", "SDXL VAE fp16-fix", "vae", "sdxl", "madebyollin/sdxl-vae-fp16-fix",
            "sdxl-vae-fp16-fix.safetensors", repo_file="sdxl_vae.safetensors", size=334641162,
            sha256="235745af8d86bf4a4c1b5b4f529868b37019a10f7c0b2e79ad0abca3a22bc6e1",
            host_folder="VAE", subdir="VAE", optional=True, licence="MIT", commercial_use=True),
        _url("clip_bpe_vocab", "CLIP BPE vocabulary (tokenizer for single-file checkpoints)",
             "tokenizer", "any", "https://github.com/openai/CLIP/raw/main/clip/"
             "bpe_simple_vocab_16e6.txt.gz", "bpe_simple_vocab_16e6.txt.gz", subdir="tokenizers",
             licence="MIT", commercial_use=True,
             notes="training from a single .safetensors file rebuilds CLIP's tokenizers from it"),
        _url("lora_filmvelvia3", "FilmVelvia3 style LoRA", "lora", "sd15",
             EP_OSS + "FilmVelvia3.safetensors", "FilmVelvia3.safetensors",
             host_folder="Lora", subdir="Lora", optional=True,
             licence="Civitai creator's terms (not verified)", commercial_use=False,
             notes="mirrored by the EasyPhoto authors"),
    )


def _controlnets() -> tuple[ModelSpec, ...]:
    """ControlNets (single-file form, as the WebUI ControlNet extension loads them)."""
    def sd15(role: str, title: str, filename: str) -> ModelSpec:
        return _hf(role, title, "controlnet", "sd15", "lllyasviel/ControlNet-v1-1", filename,
                   host_folder="ControlNet", subdir="ControlNet", licence=OPENRAIL_M,
                   commercial_use=True,
                   notes="diffusers form: lllyasviel/" + filename.rsplit(".", 1)[0])

    def sdxl(role: str, title: str, filename: str, licence: str, commercial: bool) -> ModelSpec:
        return _hf(role, title, "controlnet", "sdxl", "lllyasviel/sd_control_collection", filename,
                   host_folder="ControlNet", subdir="ControlNet", optional=True,
                   licence=licence, commercial_use=commercial)

    return (
        sd15("controlnet_sd15_canny", "ControlNet 1.1 canny (SD1.5)",
             "control_v11p_sd15_canny.pth"),
        sd15("controlnet_sd15_openpose", "ControlNet 1.1 openpose (SD1.5)",
             "control_v11p_sd15_openpose.pth"),
        sd15("controlnet_sd15_tile", "ControlNet 1.1 tile (SD1.5)", "control_v11f1e_sd15_tile.pth"),
        _url("controlnet_sd15_color", "ControlNet random colour layout (SD1.5)", "controlnet",
             "sd15", EP_OSS + "control_sd15_random_color.pth", "control_sd15_random_color.pth",
             host_folder="ControlNet", subdir="ControlNet",
             licence="not stated by the publisher (EasyPhoto authors)", commercial_use=False),
        sdxl("controlnet_sdxl_canny", "ControlNet canny mid (SDXL)",
             "diffusers_xl_canny_mid.safetensors",
             OPENRAIL_PP + " (diffusers/controlnet-canny-sdxl-1.0-mid)", True),
        sdxl("controlnet_sdxl_openpose", "ControlNet-LoRA openpose rank 256 (SDXL)",
             "thibaud_xl_openpose_256lora.safetensors",
             "see thibaud/controlnet-openpose-sdxl-1.0 (not verified)", False),
    )


def _annotators() -> tuple[ModelSpec, ...]:
    """OpenPose annotator weights (body + hands + face)."""
    def ann(role: str, title: str, filename: str, size: int, sha: str) -> ModelSpec:
        return _hf(role, title, "annotator", "any", "lllyasviel/Annotators", filename,
                   size=size, sha256=sha, subdir="annotator/openpose", licence=OPENPOSE,
                   commercial_use=False)

    return (
        ann("annotator_openpose_body", "OpenPose body", "body_pose_model.pth", 209267595,
            "25a948c16078b0f08e236bda51a385d855ef4c153598947c28c0d47ed94bb746"),
        ann("annotator_openpose_hand", "OpenPose hand", "hand_pose_model.pth", 147341049,
            "b76b00d1750901abd07b9f9d8c98cc3385b8fe834a26d4b4f0aad439e75fc600"),
        ann("annotator_openpose_face", "OpenPose face", "facenet.pth", 153718792,
            "8beb52e548624ffcc4aed12af7aee7dcbfaeea420c75609fee999fe7add79d43"),
    )


def _face_models() -> tuple[ModelSpec, ...]:
    """Face stack of the full backend (SPEC §0 rows from face detection to SR)."""
    return (
        _url("insightface_buffalo_l", "insightface buffalo_l pack (SCRFD + ArcFace R50)", "face",
             "any", INSIGHTFACE_RELEASES + "v0.7/buffalo_l.zip", "buffalo_l.zip", size=288621354,
             sha256="80ffe37d8a5940d59a7384c201a2a38d4741f2f3c51eef46ebb28218a7b0ca2f",
             subdir="insightface/models", unpack=True, optional=True,
             licence="InsightFace pretrained models: non-commercial research use only",
             commercial_use=False,
             licence_url="https://github.com/deepinsight/insightface#license"),
        _url("face_parsing_bisenet", "BiSeNet face parsing, 19 classes", "face", "any",
             EP_OSS + "face_skin.pth", "face_skin.pth", subdir="easyphoto",
             licence="trained on CelebAMask-HQ (non-commercial research dataset); not verified",
             commercial_use=False, notes="mirrored by the EasyPhoto authors"),
        _ms("face_detection_retinaface", "RetinaFace ResNet50 face detection",
            "damo/cv_resnet50_face-detection_retinaface", "v2.0.2"),
        _ms("face_fusion", "Face fusion (UNet)", "damo/cv_unet-image-face-fusion_damo", "v1.3"),
        _ms("skin_retouching", "ABPN skin retouching (torch)",
            "damo/cv_unet_skin_retouching_torch", "v1.0.2", optional=True),
        _ms("skin_retouching_tf", "ABPN skin retouching (TensorFlow original)",
            "damo/cv_unet_skin-retouching", None, optional=True,
            notes="needs tensorflow; skin_retouching is the torch port the reference uses"),
        _ms("saliency_u2net", "U2-Net salient object detection",
            "damo/cv_u2net_salient-detection", "v1.0.0"),
        _ms("portrait_enhancement_gpen", "GPEN portrait enhancement",
            "damo/cv_gpen_image-portrait-enhancement", "v1.0.0", optional=True,
            licence=MODELSCOPE_APACHE + "; upstream GPEN states academic / non-commercial use only",
            commercial_use=False),
        _ms("super_resolution_x2", "RealESRNet-class x2 background super-resolution",
            "bubbliiiing/cv_rrdb_image-super-resolution_x2", "v1.0.2", optional=True,
            licence="not stated (community ModelScope upload); not verified",
            commercial_use=False),
    )


def _build() -> Mapping[str, ModelSpec]:
    specs = _diffusion_models() + _controlnets() + _annotators() + _face_models()
    return spec_map(specs)


def spec_map(specs: Iterable[ModelSpec]) -> Mapping[str, ModelSpec]:
    """A read-only ``role -> spec`` mapping; duplicate roles are an error."""
    table: dict[str, ModelSpec] = {}
    for spec in specs:
        if spec.role in table:
            raise ValueError(f"duplicate model role {spec.role!r}")
        table[spec.role] = spec
    return MappingProxyType(table)


#: The registry (read-only). Order is the display order.
REGISTRY: Mapping[str, ModelSpec] = _build()


def all_specs() -> tuple[ModelSpec, ...]:
    """Every registered model, in display order."""
    return tuple(REGISTRY.values())

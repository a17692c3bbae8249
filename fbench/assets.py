"""Catalogue of the external assets fbench can use, and where it looks for them.

Nothing here downloads: FLAME, the datasets and the pretrained weights are licensed or
hosted outside the package registries. Each asset lives under `$FBENCH_HOME` (default
`~/.cache/fbench`), in torch's hub cache, or at an explicit path given by its
environment variable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def fbench_home() -> Path:
    return Path(os.environ.get("FBENCH_HOME") or Path.home() / ".cache" / "fbench").expanduser()


def torch_hub_checkpoints() -> Path:
    # torch.hub.get_dir() without importing torch: $TORCH_HOME/hub, else $XDG_CACHE_HOME/torch/hub.
    torch_home = os.environ.get("TORCH_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "torch"
    return Path(torch_home).expanduser() / "hub" / "checkpoints"


@dataclass(frozen=True)
class Asset:
    name: str
    description: str
    files: tuple[str, ...]  # relative to the asset's directory
    source: str  # where a researcher obtains it
    licence: str
    used_by: str
    subdir: str = ""  # directory under $FBENCH_HOME
    env: str = ""  # environment variable naming the directory explicitly
    in_torch_hub: bool = False  # lives in torch's hub cache instead of $FBENCH_HOME

    def directory(self) -> Path:
        if self.env and os.environ.get(self.env):
            return Path(os.environ[self.env]).expanduser()
        if self.in_torch_hub:
            return torch_hub_checkpoints()
        return fbench_home() / self.subdir

    def paths(self) -> list[Path]:
        return [self.directory() / f for f in self.files]

    def missing(self) -> list[Path]:
        return [p for p in self.paths() if not p.exists()]

    @property
    def present(self) -> bool:
        return not self.missing()


ASSETS: tuple[Asset, ...] = (
    Asset("flame2020", "FLAME 2020 head model (generic_model.pkl)", ("generic_model.pkl",),
          "https://flame.is.tue.mpg.de (register, download FLAME2020.zip)", "FLAME licence, non-commercial",
          "every FLAME command (else the synthetic model)", subdir="flame", env="FBENCH_FLAME_DIR"),
    Asset("smirk-flame-assets", "SMIRK's FLAME companions: landmark embeddings, masks, eyelid blendshapes",
          ("landmark_embedding.npy", "mediapipe_landmark_embedding.npz", "FLAME_masks.pkl", "l_eyelid.npy",
           "r_eyelid.npy"),
          "https://github.com/georgeretsi/smirk (assets/; FLAME_masks.pkl also at flame.is.tue.mpg.de)",
          "SMIRK repository licence / FLAME licence", "landmarks, masks and eyelids of a real FLAME",
          subdir="flame", env="FBENCH_FLAME_DIR"),
    Asset("smirk-checkpoint", "Pretrained SMIRK encoder/generator", ("SMIRK_em1.pt",),
          "https://github.com/georgeretsi/smirk (README: pretrained model)", "SMIRK licence, research only",
          "fbench eval --method smirk, fine-tuning", subdir="checkpoints"),
    Asset("teaser-checkpoint", "Pretrained TEASER model", ("TEASER.pt",),
          "https://github.com/Pixel-Talk/TEASER (README: pretrained model)", "TEASER licence, research only",
          "comparisons against TEASER", subdir="checkpoints"),
    Asset("teaser-landmarks-203", "TEASER's 203-point landmark detector and its FLAME embedding",
          ("landmark.onnx", "203_landmark_embeding_new.npz"),
          "https://github.com/Pixel-Talk/TEASER (README: Google Drive, '203 landmark model'; the embedding is "
          "datasets/preprocess_scripts/203_landmark_embeding_new.npz of the repository)",
          "TEASER licence, research only", "fbench train teaser (203-landmark loss; else disabled, recorded)",
          subdir="teaser"),
    Asset("mediapipe-face-landmarker", "MediaPipe Tasks FaceLandmarker model", ("face_landmarker.task",),
          "https://developers.google.com/mediapipe/solutions/vision/face_landmarker (model card)", "Apache-2.0",
          "fbench prep (optional; the bundled legacy FaceMesh is the default)", subdir="mediapipe"),
    Asset("fan-weights", "FAN 2D landmark network and S3FD detector for face-alignment",
          ("2DFAN4-11f355bf06.pth.tar", "s3fd-619a316812.pth"),
          "face-alignment's release files (https://github.com/1adrianb/face-alignment); place in torch's hub cache",
          "BSD-3-Clause", "fbench prep --fan auto|required", in_torch_hub=True),
    Asset("emoca-emotion-resnet50", "EMOCA's emotion recognition ResNet50 (SMIRK's expression loss)",
          ("ResNet50/checkpoints/deca-epoch=01-val_loss_total/dataloader_idx_0=1.27607644.ckpt",),
          "https://emoca.is.tue.mpg.de (register; EmotionRecognition/image_based_networks/ResNet50.zip)",
          "EMOCA licence, non-commercial", "SMIRK training (emotion loss)", subdir="emoca"),
    Asset("vgg16-weights", "torchvision VGG16 ImageNet weights (perceptual loss)", ("vgg16-397923af.pth",),
          "torchvision.models.VGG16_Weights.IMAGENET1K_V1; place in torch's hub cache", "BSD-3-Clause (torchvision)",
          "SMIRK training (perceptual VGG loss)", in_torch_hub=True),
    Asset("mobilenetv3-imagenet", "timm ImageNet weights of SMIRK's MobileNetV3 backbones (training start)",
          ("tf_mobilenetv3_small_minimal_100-922a7843.pth", "tf_mobilenetv3_large_minimal_100-8596ae28.pth"),
          "timm's release files (pretrained_cfg url), or the Hugging Face cache of timm/<name>.in1k, which is "
          "also looked up; place in torch's hub cache", "Apache-2.0 (timm)",
          "fbench train smirk (else random initialisation, with a warning)", in_torch_hub=True),
    Asset("mica", "MICA identity network (SMIRK's shape supervision)", ("mica.tar",),
          "https://github.com/Zielon/MICA (README: pretrained model)", "MICA licence, non-commercial",
          "SMIRK training (MICA shape loss)", subdir="mica"),
    Asset("famos-expression-templates", "SMIRK's FaMoS expression templates", ("expression_templates_famos",),
          "https://github.com/georgeretsi/smirk (quick_install.sh), or `fbench fit-flame famos --export-templates`",
          "FaMoS licence, non-commercial", "SMIRK training (template augmentation)", subdir="templates"),
)


def get_asset(name: str) -> Asset:
    for asset in ASSETS:
        if asset.name == name:
            return asset
    raise KeyError(f"unknown asset {name!r}; known: {', '.join(a.name for a in ASSETS)}")


# ------------------------------------------------------------------------------------ datasets

DATA_ENV = "FBENCH_DATA"
CONFIG_ENV = "FBENCH_CONFIG"


def fbench_data() -> Path:
    """Where datasets live by default: $FBENCH_DATA, else $FBENCH_HOME/data."""
    return Path(os.environ.get(DATA_ENV) or fbench_home() / "data").expanduser()


def user_config_file() -> Path:
    """fbench's own settings file: $FBENCH_CONFIG, else $FBENCH_HOME/config.yaml."""
    return Path(os.environ.get(CONFIG_ENV) or fbench_home() / "config.yaml").expanduser()


class DatasetRootError(FileNotFoundError):
    """A dataset's root is not where fbench looked; the message says where and what to do."""


@dataclass(frozen=True)
class Dataset:
    """A catalogued dataset: its pipeline/benchmark name, default folder and where to get it.
    The folder name is also in `data_cards/<name>.yaml` (`folder:`)."""

    name: str
    folder: str
    source: str

    def configured(self) -> tuple[Path, str]:
        """(root, how it was chosen): a `datasets:` entry of the user config file, else
        $FBENCH_DATA/<folder>."""
        path = user_config_file()
        if path.is_file():
            import yaml

            try:
                settings = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as exc:
                raise DatasetRootError(f"{path}: not valid YAML ({exc})") from None
            entries = settings.get("datasets") if isinstance(settings, dict) else None
            if isinstance(entries, dict) and entries.get(self.name):
                return Path(str(entries[self.name])).expanduser(), f"datasets.{self.name} in {path}"
        return fbench_data() / self.folder, f"${DATA_ENV}/{self.folder}"

    def root(self, explicit: str | Path | None = None) -> Path:
        """The dataset root: `explicit` (--root) when given, else the configured place; an error
        that says where fbench looked and what to do when it is not a folder."""
        if explicit is not None:
            root, how = Path(explicit).expanduser(), "--root"
        else:
            root, how = self.configured()
        if not root.is_dir():
            raise DatasetRootError(
                f"{self.name}: no dataset at {root} ({how}); pass --root DIR, set ${DATA_ENV} (folder "
                f"{self.folder}/ inside it) or `datasets: {{{self.name}: DIR}}` in {user_config_file()}; "
                f"`fbench synth {self.name} --out DIR` writes a synthetic miniature")
        return root


DATASETS: tuple[Dataset, ...] = (
    Dataset("affectnet", "AffectNet", "http://mohammadmahoor.com/affectnet/ (by request, licence agreement)"),
    Dataset("celeba", "CelebA", "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"),
    Dataset("ffhq", "FFHQ", "https://github.com/NVlabs/ffhq-dataset"),
    Dataset("lrs3", "LRS3", "https://www.robots.ox.ac.uk/~vgg/data/lip_reading/lrs3.html (licence agreement)"),
    Dataset("mead", "MEAD", "https://wywu.github.io/projects/MEAD/MEAD.html"),
    Dataset("famos", "FaMoS", "https://tempeh.is.tue.mpg.de/ (register; registrations archive)"),
    Dataset("bp4d", "BP4D", "http://www.cs.binghamton.edu/~lijun/Research/3DFE/3DFE_Analysis.html (licence)"),
    Dataset("multiface", "MultiFace", "https://github.com/facebookresearch/multiface (download script, v1)"),
)


def get_dataset(name: str) -> Dataset:
    for dataset in DATASETS:
        if dataset.name == name:
            return dataset
    raise KeyError(f"unknown dataset {name!r}; known: {', '.join(d.name for d in DATASETS)}")

"""Write the backbone export and the decoder export of a trained network (docs/contracts.md sections 2, 2b).

The projection head (and the decoder) are dropped; the file holds the
backbone weights and a meta block that says what they are, so ``finetune``
and ``auxlabels`` read it without being told. The format itself (meta keys,
file names, validation) is :mod:`auxseg.contracts.backbone`.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from auxseg.checkpoint_io import save_checkpoint
from auxseg.contracts.backbone import DECODER_FILENAME, decoder_meta, export_filenames, export_meta
from auxseg.contracts.common import IMAGENET_MEAN, IMAGENET_STD, Provenance
from auxseg.contracts.small_model import (
    LOCAL_PREDICTOR_FILENAME,
    SMALL_MODEL_FILENAME,
    PredictorNetwork,
    save_local_predictor,
    save_small_model,
)
from auxseg.nets.small import SmallModel
from pretrain.model import ASPP, DilatedResNet


def export_backbone(backbone: DilatedResNet, out_dir: str | Path, *, config: dict, iteration: int,
                    auxlabels_sha256: str | None, auxlabels_manifest: str | None) -> dict[str, Path]:
    """Write the backbone export(s) into ``out_dir``; returns key format -> path."""
    state = {k: v.detach().cpu().clone() for k, v in backbone.state_dict().items()}
    provenance = Provenance(config, iteration, auxlabels_sha256, auxlabels_manifest)
    paths = {}
    for key_format, name in export_filenames(backbone.stem_type).items():
        meta = export_meta(arch=backbone.arch, stem=backbone.stem_type, key_format=key_format, provenance=provenance,
                           mean=IMAGENET_MEAN, std=IMAGENET_STD, output_stride=backbone.output_stride)
        paths[key_format] = save_checkpoint({"state_dict": state, "meta": meta}, Path(out_dir) / name)
    return paths


def export_decoder(decoder: ASPP, out_dir: str | Path, *, config: dict, iteration: int,
                   auxlabels_sha256: str | None, auxlabels_manifest: str | None) -> Path:
    """Write a pre-trained ASPP decoder in mmseg ``ASPPHead`` key format (no ``conv_seg``, no ``decode_head.``)."""
    state = {k: v.detach().cpu().clone() for k, v in decoder.state_dict().items()}
    meta = decoder_meta(in_channels=decoder.in_channels, channels=decoder.out_channels, dilations=decoder.dilations,
                        provenance=Provenance(config, iteration, auxlabels_sha256, auxlabels_manifest))
    return save_checkpoint({"state_dict": state, "meta": meta}, Path(out_dir) / DECODER_FILENAME)


def export_small_model(model: SmallModel, objective, out_dir: str | Path, *, config: dict, iteration: int,
                       auxlabels_sha256: str | None, auxlabels_manifest: str | None) -> dict[str, Path]:
    """Write ``small_model.pth`` (:mod:`auxseg.contracts.small_model`): a pixel / linear / predseg1 network cannot
    be an mmseg backbone. The local-prediction objective's predictor parameters go with it (the boundary
    production needs them); other objectives' heads are dropped as for every export."""
    predictor = objective.exported_state()
    path = save_small_model(Path(out_dir) / SMALL_MODEL_FILENAME, model, config=config, iteration=iteration,
                            predictor=predictor, auxlabels_sha256=auxlabels_sha256,
                            auxlabels_manifest=auxlabels_manifest)
    return {"small_model": path}


def export_local_predictor(backbone: DilatedResNet, objective, out_dir: str | Path, *, iteration: int,
                           backbone_file: str, decoder: nn.Module | None = None) -> Path | None:
    """Write ``local_predictor.pth`` beside a ResNet backbone export when the objective has predictor parameters
    (``local_prediction``), so ``auxseg boundaries predict`` can run the ResNet; None otherwise.

    Not written when a decoder was trained (``model.decoder``): the predictor then models the decoder's
    features, and ``boundaries predict`` runs the backbone alone. Whenever it is not written, a
    ``local_predictor.pth`` an earlier run left in ``out_dir`` is removed, so it never pairs with this backbone.
    """
    path = Path(out_dir) / LOCAL_PREDICTOR_FILENAME
    predictor = objective.exported_state()
    predicts = predictor is not None
    if not predicts or decoder is not None:
        if predicts:
            print(f"[pretrain] no {path.name}: the predictor was fitted to the decoder's features (model.decoder), "
                  "and boundaries predict runs the backbone alone", flush=True)
        path.unlink(missing_ok=True)
        return None
    network = PredictorNetwork(arch=backbone.arch, stem=backbone.stem_type, out_channels=backbone.out_channels,
                               stride=backbone.output_stride, backbone=backbone_file)
    return save_local_predictor(path, predictor, network, iteration=iteration)


def export_network(net, objective, out_dir: str | Path, provenance: dict) -> dict[str, Path]:
    """The one export path: the end of a run and ``auxseg pretrain --export CHECKPOINT`` both call it.

    A small model (``model.arch`` pixel / linear / predseg1) becomes ``small_model.pth`` with the
    objective's exported state; a ResNet becomes the backbone exports (mmseg and torchvision keys),
    ``local_predictor.pth`` when the objective exports one (:meth:`Objective.exported_state`) and no
    decoder was trained, and ``decoder_mmseg.pth`` when a decoder was trained. ``provenance``:
    ``config``, ``iteration``, ``auxlabels_sha256``, ``auxlabels_manifest``. Returns name -> path.
    """
    if not isinstance(net.backbone, DilatedResNet):  # pixel / linear / predseg1: not an mmseg backbone
        return export_small_model(net.backbone, objective, out_dir, **provenance)
    paths = export_backbone(net.backbone, out_dir, **provenance)
    predictor = export_local_predictor(net.backbone, objective, out_dir, iteration=provenance["iteration"],
                                       backbone_file=paths["mmseg"].name, decoder=net.decoder)
    if predictor is not None:
        paths["local_predictor"] = predictor
    if net.decoder is not None:
        paths["decoder"] = export_decoder(net.decoder, out_dir, **provenance)
    return paths

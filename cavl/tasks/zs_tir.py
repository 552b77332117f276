"""ZS-TIR: zero-shot image↔text retrieval — TIR's evaluation on the pretrained model as it is.

Nothing is finetuned (evaluate-only; metrics.json: method "zero-shot", trainable_params 0): the
pretrained backbone with pretraining's own ITM head (`itm_head.*` of the pretraining model
folder) re-ranks, and its separate-encoding E′·F′ shortlists. Same examples (the tir tables,
`tables="tir"` in the registry), retrieval set, modes, predictions and metrics as TIR.
"""

from __future__ import annotations

from pathlib import Path

from cavl.adapters import AdapterSettings, count_parameters
from cavl.finetune_model import FinetuneModel
from cavl.io import file_sha256
from cavl.model import WEIGHTS_NAME, CavlModel
from cavl.settings import task_options
from cavl.tasks.tir import TirTask, pretrained_itm_head


class ZsTirTask(TirTask):
    name = "zs_tir"
    zero_shot = True
    options = task_options("zs_tir")  # see TirTask.options

    def prepare(self, train, options):
        raise ValueError("zs_tir is evaluated zero-shot (python -m cavl.evaluate --task zs_tir); "
                         "there is nothing to finetune")

    def zero_shot_model(self, backbone_dir, settings: dict):
        """(model, its config record) of the pretrained folder `backbone_dir`, given the resolved
        finetune settings of zs_tir (as cavl.finetune_model.settings_from_config gives them)."""
        if backbone_dir is None:
            raise ValueError("zs_tir needs the pretrained model folder (--backbone)")
        path = Path(backbone_dir)
        state = super().prepare(None, settings.get("options", {}))
        model = FinetuneModel(CavlModel.from_pretrained(path), self, state, "linear", AdapterSettings())
        head = pretrained_itm_head(path)
        if head is None:
            raise ValueError(f"{path / WEIGHTS_NAME} has no ITM head (itm_head.*): zero-shot retrieval needs "
                             "the pretraining stage's model folder")
        model.head.load_state_dict(head, strict=True)
        for p in model.parameters():
            p.requires_grad_(False)
        _, total = count_parameters(model)
        sha = file_sha256(path / WEIGHTS_NAME)
        config = {"task": self.name, "method": "zero-shot", "task_state": state,
                  "settings": {**settings, "method": "zero-shot"}, "trainable_params": 0, "total_params": total,
                  "backbone": {"path": str(path), "sha256": sha}, "checksum": sha}
        return model.eval(), config


TASK = ZsTirTask()

"""Run the *official* vid-TLDR / UMT retrieval evaluation on given weights and data, and time it.

This script imports the official code (``multi_modality`` of mlvlab/vid-TLDR, given with
``--official-dir``; nothing of it is copied here) and must run in an environment that has what that
code needs: PyTorch and ``transformers==4.32.1`` (its xbert predates later ``transformers`` APIs), e.g. a
separate virtual environment::

    python -m venv /tmp/ref_venv --system-site-packages && /tmp/ref_venv/bin/pip install transformers==4.32.1

``benchmarks/retrieval_bench.py --official-dir DIR --official-python /tmp/ref_venv/bin/python`` writes
the inputs and calls this script. The only stand-in is a three-function ``timm.models.layers`` module
(``drop_path``, ``to_2tuple``, ``trunc_normal_``; not reached at inference).

Inputs (a directory, ``--data``): ``model.pth`` (``{"model": state_dict}`` in the official layout),
``bert_config.json``, ``vocab.txt``, ``setup.json`` (vision config, embed_dim, max_txt_l, k, r,
batch size, threads), ``texts.json``, ``videos.npy`` ``(n, T, C, H, W)`` float32, ``txt2img.json``.
Output: ``--out`` JSON with the timing, the official metrics and (``--matrices``) an ``.npz`` of the four
matrices ``evaluation()`` returns.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import types
from pathlib import Path


def timm_stand_in() -> None:
    """Install a stand-in ``timm.models.layers`` module (``sys.modules``) with the three names the official
    ViT imports, so the official code runs without timm (inference never calls them with dropout
    active); the official QA benchmark reuses it."""
    import torch

    def drop_path(x, drop_prob: float = 0.0, training: bool = False):
        if drop_prob == 0.0 or not training:
            return x
        keep = 1 - drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def to_2tuple(x):
        return tuple(x) if isinstance(x, (tuple, list)) else (x, x)

    import importlib.machinery

    import transformers  # noqa: F401  (it probes for timm at import time: import it before the stand-in)

    layers = types.ModuleType("timm.models.layers")
    layers.drop_path, layers.to_2tuple, layers.trunc_normal_ = (
        drop_path,
        to_2tuple,
        torch.nn.init.trunc_normal_,
    )
    timm, models = types.ModuleType("timm"), types.ModuleType("timm.models")
    timm.models, models.layers = models, layers
    for module in (timm, models, layers):
        module.__spec__ = importlib.machinery.ModuleSpec(module.__name__, None)
    sys.modules.update({"timm": timm, "timm.models": models, "timm.models.layers": layers})


class _Loader:
    """The minimum of a DataLoader the official ``evaluation()`` reads: ``dataset`` fields and batches."""

    def __init__(self, videos, texts, txt2img, img2txt, batch_size):
        import torch

        self.videos, self.batch_size = torch.from_numpy(videos), batch_size
        self.dataset = types.SimpleNamespace(
            text=texts,
            image=[f"video{i}" for i in range(len(videos))],
            txt2img=txt2img,
            img2txt=img2txt,
            media_type="video",
        )

    def __len__(self):
        return (len(self.videos) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        import torch

        for s in range(0, len(self.videos), self.batch_size):
            yield (
                self.videos[s : s + self.batch_size],
                torch.arange(s, min(s + self.batch_size, len(self.videos))),
            )


def main(argv: list[str] | None = None) -> int:
    """Build the official UMT from ``--data``, run ``evaluation()`` + ``itm_eval``, write ``--out``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--official-dir", required=True, help="the official multi_modality directory")
    p.add_argument("--data", required=True, help="input directory (see the module docstring)")
    p.add_argument("--out", required=True, help="output JSON")
    p.add_argument("--matrices", default=None, help="also save the four matrices to this .npz")
    args = p.parse_args(argv)

    import numpy as np
    import torch

    data = Path(args.data)
    setup = json.loads((data / "setup.json").read_text())
    torch.set_num_threads(int(setup.get("threads", torch.get_num_threads())))
    sys.path.insert(0, str(Path(args.official_dir).resolve()))
    timm_stand_in()
    from models.backbones.bert.tokenization_bert import BertTokenizer
    from models.backbones.bert.xbert import BertConfig, BertModel
    from models.umt import UMT
    from tasks.retrieval_utils import evaluation, itm_eval
    from utils.easydict import EasyDict

    bert_cfg = data / "bert_config.json"
    with tempfile.TemporaryDirectory() as pretrained:
        # build_bert calls BertModel.from_pretrained(path): give it a directory of this size
        # (its weights are replaced below).
        BertModel(BertConfig.from_json_file(str(bert_cfg)), add_pooling_layer=False).save_pretrained(
            pretrained
        )
        (Path(pretrained) / "vocab.txt").write_text((data / "vocab.txt").read_text())
        bert = json.loads(bert_cfg.read_text())
        config = EasyDict(
            model=dict(
                vision_encoder=setup["vision_encoder"],
                text_encoder=dict(
                    name="bert_base",
                    pretrained=pretrained,
                    config=str(bert_cfg),
                    d_model=bert["hidden_size"],
                    fusion_layer=bert["fusion_layer"],
                ),
                multimodal=dict(enable=True),
                embed_dim=setup["embed_dim"],
                temp=0.07,
            ),
            criterion=dict(
                loss_weight=dict(vtc=1.0, mlm=0.0, vtm=1.0, uta=0.0),
                vtm_hard_neg=True,
                mlm_masking_prob=0.5,
                uta_norm_type="l2",
                uta_loss_type="l2",
            ),
            gradient_checkpointing=False,
            fp16=False,
            deep_fusion=False,
            distributed=False,
            inputs=dict(max_txt_l=setup["max_txt_l"]),
            evaluation=dict(
                eval_frame_ensemble="concat", eval_x_only=False, k_test=setup["k"], eval_offload=False
            ),
        )
        tokenizer = BertTokenizer.from_pretrained(pretrained)
        model = UMT(config=config, tokenizer=tokenizer, is_pretrain=False)
    state = torch.load(data / "model.pth", map_location="cpu", weights_only=True)["model"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SystemExit(f"official model and weights disagree: missing {missing}, unexpected {unexpected}")
    model.eval()
    texts = json.loads((data / "texts.json").read_text())
    txt2img = json.loads((data / "txt2img.json").read_text())
    img2txt: dict[int, list[int]] = {}
    for t, v in enumerate(txt2img):
        img2txt.setdefault(v, []).append(t)
    videos = np.load(data / "videos.npy")
    loader = _Loader(videos, texts, dict(enumerate(txt2img)), img2txt, int(setup["batch_size"]))
    start = time.perf_counter()
    with torch.no_grad():
        i2t_x, t2i_x, i2t_emb, t2i_emb = evaluation(model, loader, tokenizer, torch.device("cpu"), config)
    seconds = time.perf_counter() - start
    result = {
        "seconds": seconds,
        "metrics": itm_eval(i2t_x, t2i_x, loader.dataset.txt2img, img2txt),
        "metrics_emb": itm_eval(i2t_emb, t2i_emb, loader.dataset.txt2img, img2txt),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    if args.matrices:
        np.savez(args.matrices, i2t_x=i2t_x, t2i_x=t2i_x, i2t_emb=i2t_emb, t2i_emb=t2i_emb)
    return 0


if __name__ == "__main__":
    sys.exit(main())

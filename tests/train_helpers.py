"""Helpers shared by the training-path tests: the tiny BERT they train, a tokenizer and a synthetic task.

The synthetic task is learnable in a few hundred CPU steps: random token sequences, label 1 when
"positive" tokens outnumber "negative" ones. No downloads.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "glue"
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


#: The tiny BERT (``tiny_models.tiny_bert(**COUNT_BERT)``) the training tests fit to :class:`CountTask`: a
#: sequence classifier over its 64-token vocabulary, 4 heads, no dropout, left in train mode like a fresh model.
COUNT_BERT = dict(cls_name="BertForSequenceClassification", vocab_size=64, num_attention_heads=4, dropout=0.0,
                  train=True)


def fixture_tokenizer():
    """A word-level WordPiece tokenizer over the GLUE fixtures' vocabulary."""
    from transformers import BertTokenizer

    words = (FIXTURES / "vocab.txt").read_text().split()
    return BertTokenizer(vocab={w: i for i, w in enumerate(words)})


class CountTask(Dataset):
    """Label 1 when tokens from the first half of the content vocabulary outnumber the second half's."""

    def __init__(self, n: int, vocab_size: int = 64, length: int = 16, generator: torch.Generator | None = None):
        lo = len(SPECIAL)
        mid = (lo + vocab_size) // 2
        body = torch.randint(lo, vocab_size, (n, length - 2), generator=generator)
        pos = (body < mid).sum(1)
        neg = (body >= mid).sum(1)
        # Break ties by flipping one token, so every example has a clear label.
        tie = pos == neg
        body[tie, 0] = lo
        pos = (body < mid).sum(1)
        neg = (body >= mid).sum(1)
        self.labels = (pos > neg).long()
        self.input_ids = torch.cat([torch.full((n, 1), 2), body, torch.full((n, 1), 3)], dim=1)

    def __len__(self):
        return self.input_ids.shape[0]

    def __getitem__(self, i):
        return {"input_ids": self.input_ids[i], "attention_mask": torch.ones_like(self.input_ids[i]),
                "labels": self.labels[i]}


@torch.no_grad()
def predict(model, data: CountTask, batch: int = 256) -> torch.Tensor:
    model.eval()
    out = []
    for i in range(0, len(data), batch):
        ids = data.input_ids[i:i + batch]
        out.append(model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float())
    return torch.cat(out)


def accuracy(model, data: CountTask) -> float:
    return float((predict(model, data).argmax(-1) == data.labels).float().mean())


def training_args(out_dir, **kw):
    from transformers import TrainingArguments

    base = dict(output_dir=str(out_dir), per_device_train_batch_size=32, learning_rate=2e-3, num_train_epochs=1,
                logging_steps=50, save_strategy="no", report_to=[], disable_tqdm=True, use_cpu=True,
                seed=int(torch.randint(0, 2**31 - 1, ()).item()), weight_decay=0.0, lr_scheduler_type="linear")
    base.update(kw)
    return TrainingArguments(**base)

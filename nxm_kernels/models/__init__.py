"""Model knowledge (Hugging Face BERT family). Only this package and ``train`` import transformers."""

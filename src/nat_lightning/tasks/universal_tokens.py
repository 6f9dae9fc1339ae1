"""OneFormer's task prompt as token ids, as transformers' ``OneFormerProcessor`` makes them.

OneFormer conditions its queries on the text "the task is {panoptic|instance|semantic}": the
prompt's CLIP token ids, padded to ``task_seq_len`` and zeroed past the attention mask, enter
its task encoder as numbers. A network trained on one tokenizer's ids needs the same ids, so the
tokenizer comes with the checkpoint (the published OneFormer folders hold it).
"""

from __future__ import annotations

import torch

from ..models.hub import resolve_pretrained


def task_prompt(task_type: str) -> str:
    return f"the task is {task_type}"


def task_tokens(task_type: str, length: int, source: str) -> torch.Tensor:
    """(length,) int64 token ids of ``task_type``'s prompt with the CLIP tokenizer of
    ``source`` (a folder or Hub id), padded and masked as OneFormerProcessor's
    ``_preprocess_text``."""
    from transformers import AutoTokenizer

    folder = resolve_pretrained(source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError) as err:
        raise ValueError(
            f"tokenizer={source!r}: no tokenizer could be read there ({err}); OneFormer needs "
            "the CLIP tokenizer of its task prompt: a folder or Hub id holding one (vocab.json, "
            "merges.txt, tokenizer_config.json), such as shi-labs/oneformer_ade20k_dinat_large"
        ) from err
    tokens = tokenizer(
        [task_prompt(task_type)], padding="max_length", max_length=length, truncation=True
    )
    ids = torch.tensor(tokens["input_ids"][0]) * torch.tensor(tokens["attention_mask"][0])
    return ids.long()

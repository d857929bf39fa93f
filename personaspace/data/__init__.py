"""Chat datasets: reading and writing chat JSONL files (:mod:`.chat`), and building narrow (corrupted) fine-tuning sets (:mod:`.narrow`)."""

from personaspace.data.chat import load_chat_jsonl, load_chat_samples, save_chat_jsonl
from personaspace.data.narrow import make_narrow_dataset

__all__ = ["load_chat_jsonl", "load_chat_samples", "make_narrow_dataset", "save_chat_jsonl"]

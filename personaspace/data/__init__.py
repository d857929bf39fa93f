"""Chat datasets: reading and writing chat JSONL files, and building narrow (corrupted) fine-tuning sets."""

from personaspace.data.narrow import load_chat_jsonl, make_narrow_dataset, save_chat_jsonl

__all__ = ["load_chat_jsonl", "make_narrow_dataset", "save_chat_jsonl"]

"""Integrations with other libraries, each an optional extra imported only on use:
:mod:`.transformers` (Hugging Face transformers' attention interface)."""

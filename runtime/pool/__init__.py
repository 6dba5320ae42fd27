"""Pooling machines: `tandem worker` (llama.cpp RPC behind an allow-list), the network probe, and the process that runs a pooled model."""

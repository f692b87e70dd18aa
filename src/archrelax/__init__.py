"""archrelax: exact embeddings of CNNs into eLCNs/eFCNs and the relaxation protocol."""
__version__ = "0.1.0"

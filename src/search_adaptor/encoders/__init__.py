"""Encoders: one module per provider behind :class:`~search_adaptor.encoders.base.Encoder`.

The provider names are plain data here, so the command line lists them without importing numpy.
"""

LOCAL = "sentence-transformers"
#: provider name -> (module, class) of its encoder
API_CLASSES: dict[str, tuple[str, str]] = {
    "openai": ("search_adaptor.encoders.openai", "OpenAIEncoder"),
    "azure-openai": ("search_adaptor.encoders.openai", "AzureOpenAIEncoder"),
    "openai-compatible": ("search_adaptor.encoders.openai", "OpenAICompatibleEncoder"),
    "gemini": ("search_adaptor.encoders.gemini", "GeminiEncoder"),
    "vertex": ("search_adaptor.encoders.gemini", "VertexEncoder"),
    "cohere": ("search_adaptor.encoders.cohere", "CohereEncoder"),
    "voyage": ("search_adaptor.encoders.voyage", "VoyageEncoder"),
}
PROVIDERS: tuple[str, ...] = (LOCAL, *API_CLASSES)

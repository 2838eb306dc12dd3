"""Operations: logging, metrics, session recordings and ``trissh doctor``."""

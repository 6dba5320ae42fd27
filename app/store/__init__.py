from tandem.app.store.store import Store

__all__ = ["Store"]

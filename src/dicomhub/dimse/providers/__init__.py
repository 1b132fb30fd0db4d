"""Service class providers of the acceptor: one module per service class (PS3.4)."""

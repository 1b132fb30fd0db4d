"""DIMSE networking along the PS3.8 / PS3.7 layers.

transport, pdu, acse, dul, messages, association (the loop) and providers (one per service class).
"""

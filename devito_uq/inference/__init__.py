"""devito_uq.inference"""

"""devito_uq.io"""

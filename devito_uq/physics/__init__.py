"""devito_uq.physics"""

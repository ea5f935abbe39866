"""devito_uq.flows"""

"""bcnmf_sc.datasets"""

"""bcnmf_sc.tl"""

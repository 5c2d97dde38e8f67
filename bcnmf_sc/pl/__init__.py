"""bcnmf_sc.pl"""

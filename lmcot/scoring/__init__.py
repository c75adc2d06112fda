"""Answer scoring: the official HotpotQA / 2Wiki normalisation, EM/F1, gold answers and their aliases.

A leaf under the method, training and evaluation, which all score answers the same way; it reads
only the dataset records (:mod:`lmcot.datasets.data`).
"""

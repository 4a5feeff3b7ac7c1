"""Bulk provisioning: grant a license to every person in an HR export.

``famprov provision-csv`` reads and checks the whole file first (`reading`),
then sends one grant per valid row through the async client (`sending`),
recording each answer in a results file as it arrives (`results`), so that a
rerun with the same results file skips the rows already granted.
"""

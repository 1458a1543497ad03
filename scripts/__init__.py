"""The scripts behind the README's figures and generated blocks (`python -m scripts.make_figures`).

make_figures runs the README's analyses and its BuPO run through the library; findings and
findings_* render the README's prose from the files it writes into figures/, tour renders the
Quick tour and readme_blocks puts each rendering between its markers in README.md.
"""

"""Missing regions: masks, the damage-and-reconstruct hook shared by index, query and evaluate, inpainters."""

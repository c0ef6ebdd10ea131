"""Reading and writing: files and content ids, image decoding, the row contract, atomic tables."""

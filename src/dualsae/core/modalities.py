"""The two modalities of a paired store, in the order every array, loop and file name uses."""

MODALITIES = ("image", "text")

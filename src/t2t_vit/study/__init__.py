"""The paper's claims at small scale (`t2t-vit reproduce`) and the pictures (`t2t-vit visualize`). The top layer
below the command line: imports anything beneath it."""

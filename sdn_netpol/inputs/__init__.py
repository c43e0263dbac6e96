"""Reading the files people and tools hand us: manifests (manifests.py) and what an offline
compile needs besides them, Node objects and a ports file (node_inputs.py).

Why a package of its own: these modules do file I/O, so they cannot live in model/ (or
policy/ or compiler/), which stay pure; and they are shared by the CLI (cli/) and by the I/O
shells (the lab's store, the controller's folder source), so they cannot live in cli/ either,
which nothing but the console script may import. Layering, top-down (tests/test_layers.py):
cli/ → I/O packages (controller/, cni/, lab/, ovs/, inputs/, …) → compiler/ → policy/ → model/.
"""

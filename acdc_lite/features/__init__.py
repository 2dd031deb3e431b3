"""Below the component level: dictionaries (sparse autoencoders, transcoders) on a hook, splicing them into the
model, which features carry a circuit edge's effect, task variables, and linear probes.

Modules: `sites` (where activations are read and written), `sae` (train and save a dictionary), `splice` (the
model with a dictionary's reconstruction in place of the activation), `attribution` (features of a circuit edge),
`variables` (what a task's prompts encode: the answer token, the carry), `probes` (linear probes by layer),
`commands` (the run folders of `acdc-lite sae train` and `acdc-lite probe`).
The dictionaries use eai-sparsify's `SparseCoder` (`pip install 'acdc-lite[features]'`); probes use scikit-learn.
"""

"""The library behind the commands, in layers that import only downward:

- ``utils.core``: plumbing (errors, files, runtime, command-line helpers, checkpoints);
  imports nothing of the project;
- ``models`` (beside ``utils``): the backbone families, the L-CAM core and its variants;
- ``utils.data``: datalists, loaders, decoding on the device, the generated digits set;
- ``utils.explainers``: L-CAM and the baselines behind one ``explain(images, classes)``;
- ``utils.evaluation``: AD/IC, ROAD, localisation, figures and tables;
- ``utils.training``: the training loop, optimiser, checkpoint writing and resume.

``utils.metrics``, ``utils.optim``, ``utils.checkpoint``, ``utils.files`` and
``utils.baselines`` re-export their new homes for code written against earlier versions.
"""

"""From a picture to the network's input: safe image reading, face detection (and its worker
process), the one square face crop, and the device-side resize and test-time views.

Submodules are imported by name (``fer_lightning.faces.detectors`` ...): the detectors import
neither torch nor Lightning, so the detection worker process starts fast.
"""

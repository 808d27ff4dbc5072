"""Where every model part comes from: a preset (random weights from the configs in presets/), a local
diffusers folder, a single SD checkpoint or a hub id (sources.py: the rules), the neural parts
(networks.py), the tokenizer and scheduler and the bundle of them (components.py), the CLIP tokenizer
that cleans prompts (clip_tokenizer.py). Imports nothing else of the package."""

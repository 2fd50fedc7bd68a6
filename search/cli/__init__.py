"""The main job's command line: flags, the settings they resolve to (profiles, --resume, --warm-start), the checks
before anything is decoded, the local Ray, and the run itself. Imports the rooms below it."""

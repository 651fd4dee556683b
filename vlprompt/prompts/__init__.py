"""Building prompts: templates with slots, slot filling, init strategies, template banks."""

"""Integrations with serving engines. Each module imports its engine; `import cull` imports none."""

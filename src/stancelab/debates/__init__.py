"""Agent debates: experiment files, the debate protocol, the runner, reports and SAUCE import."""

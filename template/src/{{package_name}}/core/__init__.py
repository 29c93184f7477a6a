"""The service's infrastructure: settings, the database and its sessions, migrations, errors."""

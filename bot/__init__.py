"""import-status-bot: MyPreferences bulk import status in Slack."""

"""The shared kit the cards build on: the native wire layer, Kafka shipping, the part contract, the admin
app, exposition and logging, migrations, the Envoy and echo helpers. It never imports a card or the
composition root above it (`remixer.cli`, `remixer.serve`, `remixer.settings`, ...): import-linter says so.
"""

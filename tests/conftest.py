pytest_plugins = ['tests.fakesysfs.plugin']

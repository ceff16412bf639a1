pytest_plugins = ['tests.fakesysfs.plugin', 'tests.fake_cli', 'tests.daemon_harness']

tool
extends EditorPlugin
## Adds the [code]DialogueTTS[/code] autoload while the plugin is enabled.

const AUTOLOAD_NAME: String = "DialogueTTS"


func enable_plugin() -> void:
	var folder: String = (get_script() as Script).resource_path.get_base_dir()
	add_autoload_singleton(AUTOLOAD_NAME, folder.plus_file("dialogue_tts.gd"))


func disable_plugin() -> void:
	remove_autoload_singleton(AUTOLOAD_NAME)

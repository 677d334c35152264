# updlrm_add_emu_kernel(<name> SOURCES <c files...> [NR_TASKLETS n] [STACK_SIZE_DEFAULT b]
#                       [INCLUDE_DIRS dirs...] [DEFINES defs...] [INSTALL_DIR dir])
# Compiles a DPU C program unchanged with the host compiler against host/emu's DPU runtime
# headers, producing <name>.emu.so that dpu_load() of the emulator accepts.
# (placeholder: filled in with the emulator)
function(updlrm_add_emu_kernel name)
endfunction()

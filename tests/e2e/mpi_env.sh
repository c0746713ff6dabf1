# Sourced by the e2e scripts that launch mpirun: Open MPI on one machine, as root in CI,
# over shared memory (docs/contributing.md, "Running MPI as root").
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
       OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_btl=self,vader OMPI_MCA_pml=ob1
